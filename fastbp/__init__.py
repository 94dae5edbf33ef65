"""fastbp: layer-based error backpropagation, made fast on NumPy, Numba and CuPy.

Importing this package never imports numba, cupy or torch: a backend's module
is loaded the first time that backend is requested.
"""

from fastbp._version import __version__
from fastbp.backends import (
    BackendUnavailableError,
    available_backends,
    backend_info,
    get_backend,
    set_backend,
    to_device,
    to_numpy,
    use_backend,
)

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "available_backends",
    "backend_info",
    "get_backend",
    "load_params",
    "save_params",
    "set_backend",
    "to_device",
    "to_numpy",
    "use_backend",
]


def __getattr__(name):
    """``save_params`` and ``load_params`` live in ``fastbp.train``, imported on first use."""
    if name in ("save_params", "load_params"):
        from fastbp import train

        return getattr(train, name)
    raise AttributeError(f"module 'fastbp' has no attribute {name!r}")

"""Backend registry and selection.

Precedence, highest first: an explicit ``backend=`` argument, the innermost
``use_backend`` block, ``set_backend``, the ``FASTBP_BACKEND`` environment
variable (empty counts as unset), and finally ``"numpy"``.

Backend modules are imported only when their backend is first requested, so
``import fastbp`` never imports numba or cupy.  A requested backend that
cannot run here raises :class:`BackendUnavailableError`; fastbp never falls
back to another backend silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

__all__ = [
    "BackendUnavailableError",
    "available_backends",
    "backend_info",
    "get_backend",
    "set_backend",
    "to_device",
    "to_numpy",
    "use_backend",
    "BACKEND_NAMES",
]

# name -> (module, class); the modules are imported lazily.
_REGISTRY = {
    "numpy": ("fastbp.backends.numpy_backend", "NumpyBackend"),
    "numba": ("fastbp.backends.numba_backend", "NumbaBackend"),
    "cupy": ("fastbp.backends.cupy_backend", "CupyBackend"),
}
BACKEND_NAMES = tuple(_REGISTRY)

_INSTALL_HINTS = {
    "numba": 'pip install "fastbp[numba]"',
    "cupy": 'pip install "fastbp[cuda12]"  (or "fastbp[cuda13]" for CUDA 13 drivers)',
}


class BackendUnavailableError(ImportError):
    """A known backend cannot run on this machine (missing package or device)."""


_instances: dict = {}
_global_choice: str | None = None
_context_choice: contextvars.ContextVar = contextvars.ContextVar("fastbp_backend", default=None)


def _validate_name(name) -> str:
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(
            f"fastbp: unknown backend {name!r}; expected one of {sorted(_REGISTRY)}"
        )
    return name.lower()


def _instantiate(name: str):
    """Create (once) the backend ``name``, translating failures into install hints."""
    if name in _instances:
        return _instances[name]
    module_name, class_name = _REGISTRY[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        backend = cls()
    except BackendUnavailableError:
        raise
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(name, "")
        raise BackendUnavailableError(
            f"fastbp: backend {name!r} is not available: {exc}. Install it with: {hint}"
        ) from exc
    _instances[name] = backend
    return backend


def _resolve(choice):
    if choice is None:
        return _instantiate("numpy")
    if not isinstance(choice, str):  # already a backend object, or not a backend at all
        from fastbp.backends.numpy_backend import NumpyBackend  # every backend's base

        if isinstance(choice, NumpyBackend):
            return choice
        _validate_name(choice)  # raises the ValueError listing the valid names
    return _instantiate(_validate_name(choice))


def get_backend(backend=None):
    """Return the backend object that applies here (see the module docstring)."""
    if backend is not None:
        return _resolve(backend)
    for choice in (_context_choice.get(), _global_choice):
        if choice is not None:
            return _resolve(choice)
    env = os.environ.get("FASTBP_BACKEND", "").strip()
    if env:
        try:
            _validate_name(env)
        except ValueError as exc:
            raise ValueError(f"{exc} (from the FASTBP_BACKEND environment variable)") from None
        return _resolve(env)
    return _resolve(None)


def set_backend(name: str):
    """Make ``name`` the process-wide default backend and return it.

    The backend is created first, so a failure leaves the current choice as it was.
    """
    global _global_choice
    backend = _resolve(_validate_name(name))
    _global_choice = backend.name
    return backend


@contextlib.contextmanager
def use_backend(name: str):
    """Use backend ``name`` inside a ``with`` block (thread- and task-local)."""
    backend = _resolve(_validate_name(name))
    token = _context_choice.set(backend.name)
    try:
        yield backend
    finally:
        _context_choice.reset(token)


def _probe(name: str):
    """Return (backend or None, reason it is unavailable or None)."""
    try:
        return _instantiate(name), None
    except BackendUnavailableError as exc:
        return None, str(exc)


def available_backends() -> list:
    """Names of the backends that can run on this machine, reference first."""
    return [name for name in _REGISTRY if _probe(name)[0] is not None]


def backend_info() -> dict:
    """For every known backend: whether it runs here, why not, and its own details."""
    info = {}
    for name in _REGISTRY:
        backend, reason = _probe(name)
        entry = {"available": backend is not None}
        if backend is None:
            entry["reason"] = reason
        else:
            entry.update(backend.info())
        info[name] = entry
    return info


def to_device(x, backend=None):
    """``x`` as an array of ``backend`` (default: the current one); copies only across devices."""
    return get_backend(backend).asarray(x)


def to_numpy(x):
    """``x`` as a host NumPy array, wherever it lives."""
    if hasattr(x, "__cuda_array_interface__"):
        return x.get()
    import numpy

    return numpy.asarray(x)

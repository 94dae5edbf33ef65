"""Matrix products for the numba backend: every product of a step in one BLAS.

NumPy's wheels carry their own OpenBLAS, and SciPy's carry another.  The
products go to NumPy's copy when its CBLAS ``gemm`` can be reached: it is the
library behind NumPy's ``@`` (so a step shares its thread pool with the
user's own NumPy code instead of fighting a second pool for the cores), and
its sgemm ran 10-25% faster than SciPy's on this project's shapes.  The call
is compiled with numba (under 1 µs a call; through ctypes it took 7 µs here).  Otherwise
(another NumPy build, or ``NUMBA_DISABLE_JIT``) they go to SciPy's OpenBLAS.

Either way C-contiguous arrays go in as they are, with transpose flags, so no
operand is copied, and ``beta = 1`` lets a weight update ride on the product
that makes its gradient.
"""

from __future__ import annotations

import ctypes
import os

import numba
import numpy as np
from llvmlite import binding
from numba import njit, types

_SYMBOLS = {np.dtype(np.float32): "scipy_cblas_sgemm64_", np.dtype(np.float64): "scipy_cblas_dgemm64_"}


def numpy_openblas() -> str | None:
    """Path of NumPy's bundled 64-bit-integer OpenBLAS when it exports CBLAS gemm, else None."""
    from threadpoolctl import threadpool_info

    numpy_dir = os.path.dirname(os.path.realpath(np.__file__))
    # wheels keep it in numpy.libs/ (Linux, Windows) or numpy/.dylibs/ (macOS)
    homes = (numpy_dir + os.sep, numpy_dir + ".libs" + os.sep)
    for lib in threadpool_info():
        path = os.path.realpath(lib.get("filepath") or "")
        if lib.get("internal_api") == "openblas" and path.startswith(homes):
            try:
                exported = ctypes.CDLL(path)
            except OSError:
                return None
            return path if all(hasattr(exported, s) for s in _SYMBOLS.values()) else None
    return None


def _scipy_gemm():
    from scipy.linalg import blas

    routines = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}

    def gemm(a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        # BLAS is column-major; a C-contiguous matrix is the column-major storage of
        # its transpose, so ``out.T = op(b).T @ op(a).T`` runs on the same memory.
        routines[out.dtype](alpha, b.T, a.T, beta=beta, c=out.T, trans_a=trans_b,
                            trans_b=trans_a, overwrite_c=True)
        return out

    return gemm


def _cblas_gemm(dtype):
    """numba's type for NumPy's CBLAS ``?gemm`` (64-bit integers, the library's symbol names)."""
    i32, i64, ptr, real = types.int32, types.int64, types.voidptr, numba.from_dtype(dtype)
    return types.ExternalFunction(_SYMBOLS[dtype], types.void(
        i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64))


_sgemm, _dgemm = _cblas_gemm(np.dtype(np.float32)), _cblas_gemm(np.dtype(np.float64))
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # the CBLAS enums


@njit(cache=True)
def _numpy_blas_gemm(a, b, out, trans_a, trans_b, alpha, beta):
    """Compiled only once NumPy's library is loaded: the symbols resolve by name, so it caches."""
    args = (_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
            out.shape[0], out.shape[1], a.shape[0] if trans_a else a.shape[1], alpha, a.ctypes,
            max(1, a.shape[1]), b.ctypes, max(1, b.shape[1]), beta, out.ctypes,
            max(1, out.shape[1]))
    if out.itemsize == 4:
        _sgemm(*args)
    else:
        _dgemm(*args)


def _numpy_gemm(path):
    binding.load_library_permanently(path)

    def gemm(a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
        # Python floats: numba types them faster than NumPy scalars (0.5 vs 1.1 µs a call),
        # and the call casts them to the routine's precision
        _numpy_blas_gemm(a, b, out, trans_a, trans_b, float(alpha), float(beta))
        return out

    return gemm


def _get_num_threads(path):
    """NumPy's OpenBLAS's own ``get_num_threads`` function (called through ctypes, under a
    microsecond), or None where the library does not export it."""
    ask = getattr(ctypes.CDLL(path), "scipy_openblas_get_num_threads64_", None)
    if ask is not None:
        ask.restype, ask.argtypes = ctypes.c_int, []
    return ask


def _choose():
    path = None if numba.config.DISABLE_JIT else numpy_openblas()
    if path:
        return _numpy_gemm(path), f"NumPy's OpenBLAS ({os.path.basename(path)})", _get_num_threads(path)
    return _scipy_gemm(), "SciPy's OpenBLAS", None


gemm, LIBRARY, _library_threads = _choose()
#: True when the products run in NumPy's OpenBLAS, callable from compiled kernels too
IN_NUMBA = LIBRARY.startswith("NumPy's")
gemm.__doc__ = """In place ``out = alpha * op(a) @ op(b) + beta * out`` for C-contiguous float arrays.

``op`` transposes when ``trans_a`` / ``trans_b`` is set; ``out`` is returned.
"""


def threads() -> int | None:
    """How many threads the products run on now (``threadpoolctl`` and
    ``OPENBLAS_NUM_THREADS`` set it), or None where the library does not say."""
    return _library_threads() if _library_threads else None

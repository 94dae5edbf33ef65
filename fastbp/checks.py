"""Input validation shared by the layers, nets, optimizers, the Trainer and the CLI.

Each check returns the value it accepts (converted where that helps) and
otherwise raises a ``ValueError`` that names the owner, the argument, what
was expected and what was received.  Nothing here imports more than NumPy.
"""

from __future__ import annotations

import contextlib
import math

import numpy

__all__ = ["FLOAT_DTYPES", "check_choice", "check_count", "check_number", "check_seed",
           "check_targets", "float_dtype"]

#: the floating-point dtypes a net can hold, by name (the first is the default)
FLOAT_DTYPES = ("float64", "float32")


def check_number(owner, argument, value, expected, ok):
    """``value`` as a float when it is a finite number and ``ok(value)``, else a ValueError
    naming owner, argument, ``expected`` and the value received.  Shared by the layers, the
    nets and the optimizers; a bool or a string is not taken for a number."""
    number = math.nan
    if not isinstance(value, (bool, numpy.bool_, str, bytes)):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{owner}: {argument} must be a finite number {expected}, received "
                         f"{value!r}")
    if not ok(number):
        raise ValueError(f"{owner}: {argument} must be {expected}, received {value!r}")
    return number


def check_count(owner, argument, value, allow_none=False):
    """``value`` as an ``int`` >= 1 (not a bool); ``None`` passes when ``allow_none``."""
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 1:
        raise ValueError(f"{owner}: {argument} must be an integer >= 1, received {value!r}")
    return int(value)


def check_seed(owner, seed):
    """``seed`` when ``numpy.random.default_rng`` takes it (None, an int >= 0, a sequence of
    them, a SeedSequence, a Generator; not a bool), else a ValueError naming the owner."""
    try:
        if isinstance(seed, (bool, numpy.bool_)):
            raise TypeError("a bool is not a seed")
        numpy.random.default_rng(seed)  # a Generator comes back as it is: nothing drawn
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{owner}: seed must be None, an integer >= 0 or anything else "
                         f"numpy.random.default_rng takes, received {seed!r} ({exc})") from None
    return seed


def check_real(where, what, array):
    """Refuse an array that does not hold real numbers: a cast to a float dtype would drop
    imaginary parts with only a warning, or fail deep inside NumPy."""
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{where}: expected real numbers in {what}, received dtype {array.dtype}")


def check_choice(owner, argument, value, choices):
    """Refuse a ``value`` that is not one of ``choices`` (a sequence or the keys of a mapping)."""
    if value not in choices:
        raise ValueError(f"{owner}: {argument} must be one of {list(choices)}, received {value!r}")
    return value


def float_dtype(owner, dtype):
    """``dtype`` as a NumPy dtype, which must be float64 or float32."""
    try:
        resolved = numpy.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in FLOAT_DTYPES:
        raise ValueError(f"{owner}: dtype must be one of {list(FLOAT_DTYPES)}, received {dtype!r}")
    return resolved


def check_targets(where, t, n, classes, backend, dtype, check_range=True):
    """``t`` for ``n`` rows of ``classes`` scores: class indices ``(n,)`` in ``[0, classes)``,
    or one-hot rows ``(n, classes)`` of real numbers, cast to ``dtype``.  ``check_range=False``
    skips the range test on a GPU (where it waits for the device), for labels already checked;
    on a CPU the test is cheap and an unchecked label would index outside the arrays."""
    if t.ndim == 1:
        if t.dtype.kind not in "iu":
            raise ValueError(f"{where}: class-index labels must be integers, received dtype {t.dtype}")
        if t.shape[0] != n:
            raise ValueError(f"{where}: x has {n} rows but t has {t.shape[0]} labels")
        if not t.dtype.isnative:  # big-endian from a file: the compiled kernels take native
            t = t.astype(t.dtype.newbyteorder("="))
        low, high = backend.label_range(t) if check_range or not backend.gpu else (0, 0)
        if low < 0 or high >= classes:
            raise ValueError(f"{where}: labels must lie in [0, {classes}), received values in "
                             f"[{low}, {high}]")
        return t
    if t.shape == (n, classes):
        if t.dtype.kind not in "fiub":
            raise ValueError(f"{where}: one-hot targets must be real numbers, received dtype "
                             f"{t.dtype}")
        return t.astype(dtype, copy=False)
    raise ValueError(f"{where}: expected t of shape ({n},) class indices or ({n}, {classes}) "
                     f"one-hot, received shape {tuple(t.shape)}")

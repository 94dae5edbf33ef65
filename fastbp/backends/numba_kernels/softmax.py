"""Softmax + cross-entropy (loss, probabilities or gradient in one pass), its backward, labels.

Only this pass runs rows in parallel, and only from ``PARALLEL_MIN`` elements
on (a parallel launch costs microseconds; each parallel kernel adds about a
second to a cold compile, and on these sizes the element-wise passes are a
few per cent of a step next to BLAS).  Rows go in chunks of ``CHUNK``, and
the per-row losses are summed after the parallel loop in index order, so no
result depends on the number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastbp.backends.numba_kernels.elementwise import _flushed

PARALLEL_MIN = 1 << 15
CHUNK = 64


@njit(cache=True, error_model="numpy")
def _sum(values):
    """A plain loop in index order: a fixed summation order, whatever the threads."""
    total = values.dtype.type(0)  # not values[0] - values[0]: inf - inf is NaN
    for v in values:
        total += v
    return total


@njit(cache=True, error_model="numpy")
def _xent_rows(z, b, t, out, losses, scale, one, start, stop):
    """Rows ``start:stop`` of the loss of ``softmax(z + b)`` against ``t``.

    ``out`` receives the probabilities (flushed of subnormals), or with
    ``scale != 0`` the gradient ``(p - t) * scale``.  Rows at a time: a call
    per row would cost more than its work.
    """
    tiny = z.dtype.type(np.finfo(z.dtype).tiny)
    for i in range(start, stop):
        m = z[i, 0] + b[0]
        for j in range(1, z.shape[1]):
            m = max(m, z[i, j] + b[j])
        s = m - m
        for j in range(z.shape[1]):
            e = np.exp(z[i, j] + b[j] - m)
            out[i, j] = e
            s += e
        lse = np.log(s)
        for j in range(z.shape[1]):
            out[i, j] = _flushed(out[i, j] / s, tiny)
        if t.ndim == 1:
            k = t[i]
            losses[i] = lse - (z[i, k] + b[k] - m)
            if scale != 0:
                out[i, k] -= one
                for j in range(z.shape[1]):
                    out[i, j] *= scale
        else:
            loss = lse - lse
            for j in range(z.shape[1]):
                loss += t[i, j] * (lse - (z[i, j] + b[j] - m))
                if scale != 0:
                    out[i, j] = (out[i, j] - t[i, j]) * scale
            losses[i] = loss


def softmax_xent(z, b, t, out, scale):
    """Mean over rows of the cross-entropy of ``softmax(z + b)`` against ``t``.

    ``t`` is class indices ``(N,)`` or one-hot ``(N, C)``; ``out`` as in
    :func:`_xent_rows`.  Rows run in parallel from ``PARALLEL_MIN`` elements
    on; below, a kernel compiled without ``parallel`` runs them (calling the
    parallel one costs a microsecond more even when it runs serially).
    """
    kernel = _softmax_xent_parallel if z.size >= PARALLEL_MIN else _softmax_xent_serial
    return kernel(z, b, t, out, scale)


@njit(cache=True, error_model="numpy")
def _softmax_xent_serial(z, b, t, out, scale):
    n = z.shape[0]
    losses = np.empty(n, dtype=z.dtype)
    _xent_rows(z, b, t, out, losses, z.dtype.type(scale), z.dtype.type(1), 0, n)
    return _sum(losses) / z.dtype.type(n)


@njit(cache=True, parallel=True, error_model="numpy")
def _softmax_xent_parallel(z, b, t, out, scale):
    """Per-row losses are summed after the loop: the result does not depend on the threads."""
    n, one, scale = z.shape[0], z.dtype.type(1), z.dtype.type(scale)
    losses = np.empty(n, dtype=z.dtype)
    for c in prange((n + CHUNK - 1) // CHUNK):
        _xent_rows(z, b, t, out, losses, scale, one, c * CHUNK, min(c * CHUNK + CHUNK, n))
    return _sum(losses) / z.dtype.type(n)


@njit(cache=True, error_model="numpy")
def softmax_xent_backward(probs, t, dx, scale):
    """``dx = (probs - onehot(t)) * scale``."""
    one, scale = probs.dtype.type(1), probs.dtype.type(scale)
    for i in range(probs.shape[0]):
        for j in range(probs.shape[1]):
            if t.ndim == 2:
                dx[i, j] = (probs[i, j] - t[i, j]) * scale
            else:
                dx[i, j] = (probs[i, j] - (one if t[i] == j else one - one)) * scale


@njit(cache=True, error_model="numpy")
def label_range(t):
    """Smallest and largest label in one pass (two NumPy reductions cost more on small batches)."""
    low = high = t[0]
    for v in t:
        low = min(low, v)
        high = max(high, v)
    return low, high

"""A whole training step of a plain net (any depth, no BatchNorm or dropout) as one compiled call.

The same step as ``MultiLayerNet._step`` with a materialised gradient,
block for block: products through NumPy's BLAS called from inside the
kernel, bias + activation, softmax + cross-entropy + gradient, activation
backward with the bias gradient, the weight-decay term, and then the
optimizer's fused pass over the whole flat parameter buffer.  What it saves
is the Python between the blocks, which is most of a small net's step.
Only usable when :data:`fastbp.backends.numba_blas.IN_NUMBA` (NumPy's
OpenBLAS reachable from numba).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastbp.backends.numba_blas import _numpy_blas_gemm
from fastbp.backends.numba_kernels.elementwise import _act, _act_backward
from fastbp.backends.numba_kernels.softmax import _sum, _xent_rows
from fastbp.backends.numba_kernels.updates import optimizer_update


def work_size(batch, sizes) -> int:
    """Scratch elements of a step: every layer's activations, then two gradient buffers."""
    return batch * (sum(sizes[1:]) + 2 * max(sizes[1:]))


@njit(cache=True, error_model="numpy")
def mlp_step(x, t, sizes, p, g, act, lam, kind, s1, s2, c, work, check_finite):
    """One step in place on the flat ``p`` (params), ``g`` (gradients) and state ``s1``, ``s2``.

    ``sizes`` are the layer widths, input first; ``p`` and ``g`` hold
    ``W1, b1, W2, b2, ...`` in order; ``kind`` and ``c`` are the update's
    code and constants (see :func:`~.updates.optimizer_update`).  Returns
    the loss; with ``check_finite`` a NaN or inf loss returns before
    anything is updated.  ``work`` is scratch of at least
    :func:`work_size` elements, reused from step to step (a fresh array of
    megabytes each step costs its page faults every time).
    """
    n, layers = x.shape[0], sizes.size - 1
    dtype = x.dtype.type
    one, lam = dtype(1), dtype(lam)
    widest = 0
    for w in sizes[1:]:
        widest = max(widest, w)
    acts = [x]
    start = 0
    offset = 0
    for layer in range(layers):
        rows, cols = sizes[layer], sizes[layer + 1]
        W = p[offset:offset + rows * cols].reshape((rows, cols))
        b = p[offset + rows * cols:offset + rows * cols + cols]
        offset += rows * cols + cols
        z = work[start:start + n * cols].reshape((n, cols))
        start += n * cols
        _numpy_blas_gemm(acts[layer], W, z, False, False, 1.0, 0.0)
        if layer < layers - 1:
            for i in range(n):
                for j in range(z.shape[1]):
                    z[i, j] = _act(z[i, j] + b[j], act, one)
        acts.append(z)
    classes = sizes[layers]
    here, there = work[start:start + n * widest], work[start + n * widest:]  # gradients, in turn
    d = here[:n * classes].reshape((n, classes))
    losses = np.empty(n, dtype=x.dtype)
    _xent_rows(acts[layers], b, t, d, losses, one / dtype(n), one, 0, n)
    loss = _sum(losses) / dtype(n)
    if lam != 0:
        squares = loss - loss
        offset = 0
        for layer in range(layers):
            size = sizes[layer] * sizes[layer + 1]
            for k in range(offset, offset + size):
                squares += p[k] * p[k]
            offset += size + sizes[layer + 1]
        loss += dtype(0.5) * lam * squares
    if check_finite and not np.isfinite(loss):
        return loss

    ends = np.empty(layers, dtype=np.int64)  # where each layer's W starts
    offset = 0
    for layer in range(layers):
        ends[layer] = offset
        offset += sizes[layer] * sizes[layer + 1] + sizes[layer + 1]
    for layer in range(layers - 1, -1, -1):
        rows, cols, at = sizes[layer], sizes[layer + 1], ends[layer]
        W = p[at:at + rows * cols].reshape((rows, cols))
        gW = g[at:at + rows * cols].reshape((rows, cols))
        gb = g[at + rows * cols:at + rows * cols + cols]
        gb[:] = 0
        for i in range(n):
            for j in range(d.shape[1]):
                gb[j] += d[i, j]
        if lam != 0:
            for k in range(W.shape[0]):
                for j in range(W.shape[1]):
                    gW[k, j] = lam * W[k, j]
        _numpy_blas_gemm(acts[layer], d, gW, True, False, 1.0, 1.0 if lam != 0 else 0.0)
        if layer == 0:
            break
        below = there[:n * sizes[layer]].reshape((n, sizes[layer]))
        _numpy_blas_gemm(d, W, below, False, True, 1.0, 0.0)
        a = acts[layer]
        for i in range(n):
            for j in range(below.shape[1]):
                below[i, j] = _act_backward(below[i, j], a[i, j], act, one)
        here, there = there, here
        d = below
    optimizer_update(kind, p, g, s1, s2, c)
    return loss

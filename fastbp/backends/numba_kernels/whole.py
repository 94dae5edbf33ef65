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
    starts = np.empty(layers + 1, dtype=np.int64)  # where each layer's W (and its output) starts
    starts[0] = 0
    for layer in range(layers):
        starts[layer + 1] = starts[layer] + sizes[layer] * sizes[layer + 1] + sizes[layer + 1]

    for layer in range(layers):
        W, b = _weights(p, starts, sizes, layer)
        z = _output(work, sizes, n, layer)
        _numpy_blas_gemm(_input(x, work, sizes, n, layer), W, z, False, False, 1.0, 0.0)
        if layer < layers - 1:
            for i in range(n):
                for j in range(z.shape[1]):
                    z[i, j] = _act(z[i, j] + b[j], act, one)
    classes = sizes[layers]
    total = 0
    for w in sizes[1:]:
        total += n * w
    here, there = work[total:total + n * widest], work[total + n * widest:total + 2 * n * widest]
    d = here[:n * classes].reshape((n, classes))
    losses = np.empty(n, dtype=x.dtype)
    _, b = _weights(p, starts, sizes, layers - 1)
    _xent_rows(_output(work, sizes, n, layers - 1), b, t, d, losses, one / dtype(n), one, 0, n)
    loss = _sum(losses) / dtype(n)
    if lam != 0:
        squares = loss - loss
        for layer in range(layers):
            for k in range(starts[layer], starts[layer] + sizes[layer] * sizes[layer + 1]):
                squares += p[k] * p[k]
        loss += dtype(0.5) * lam * squares
    if check_finite and not np.isfinite(loss):
        return loss

    for layer in range(layers - 1, -1, -1):
        W, _ = _weights(p, starts, sizes, layer)
        gW, gb = _weights(g, starts, sizes, layer)
        gb[:] = 0
        for i in range(n):
            for j in range(d.shape[1]):
                gb[j] += d[i, j]
        if lam != 0:
            for k in range(W.shape[0]):
                for j in range(W.shape[1]):
                    gW[k, j] = lam * W[k, j]
        a_in = _input(x, work, sizes, n, layer)
        _numpy_blas_gemm(a_in, d, gW, True, False, 1.0, 1.0 if lam != 0 else 0.0)
        if layer == 0:
            break
        below = there[:n * sizes[layer]].reshape((n, sizes[layer]))
        _numpy_blas_gemm(d, W, below, False, True, 1.0, 0.0)
        for i in range(n):
            for j in range(below.shape[1]):
                below[i, j] = _act_backward(below[i, j], a_in[i, j], act, one)
        here, there = there, here
        d = below
    optimizer_update(kind, p, g, s1, s2, c)
    return loss


@njit(cache=True, error_model="numpy")
def _weights(flat, starts, sizes, layer):
    """Layer ``layer``'s ``(W, b)`` as views of the flat ``flat``."""
    rows, cols, at = sizes[layer], sizes[layer + 1], starts[layer]
    return flat[at:at + rows * cols].reshape((rows, cols)), flat[at + rows * cols:at + rows * cols + cols]


@njit(cache=True, error_model="numpy")
def _output(work, sizes, n, layer):
    """Layer ``layer``'s output, ``(n, sizes[layer + 1])``, in the scratch."""
    start = 0
    for k in range(1, layer + 1):
        start += n * sizes[k]
    return work[start:start + n * sizes[layer + 1]].reshape((n, sizes[layer + 1]))


@njit(cache=True, error_model="numpy")
def _input(x, work, sizes, n, layer):
    """Layer ``layer``'s input: ``x``, or the output of the layer before."""
    return x if layer == 0 else _output(work, sizes, n, layer - 1)

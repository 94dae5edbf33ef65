"""The forward and backward pass of a net (any depth, BatchNorm, dropout or neither) as one call.

The same pass as ``MultiLayerNet._step`` with a materialised gradient,
block for block: products through NumPy's BLAS called from inside the
kernel, bias + activation (or bias, BatchNorm, activation), softmax +
cross-entropy + gradient, dropout's mask, activation backward (then
BatchNorm's) with the bias gradient and the weight-decay term, into the net's flat gradient
buffer; the backend then runs the optimizer's fused pass over the whole flat
parameter buffer (a kernel of its own, so this one compiles once for every
optimizer).  What it saves is the Python between the blocks, which is most
of a small net's step.  A net without BatchNorm passes ``running=None``, and
its specialisation compiles no BatchNorm code; likewise ``uniforms=None``
compiles no dropout.  Only usable when
:data:`fastbp.backends.numba_blas.IN_NUMBA` (NumPy's OpenBLAS reachable from
numba).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastbp.backends.numba_blas import _numpy_blas_gemm
from fastbp.backends.numba_kernels.batchnorm import batchnorm_backward, batchnorm_forward
from fastbp.backends.numba_kernels.elementwise import _act, _act_backward, _dot, all_finite
from fastbp.backends.numba_kernels.softmax import _sum, _xent_rows


def work_size(batch, sizes, batchnorm=False, dropout=False) -> int:
    """Scratch elements of a step: every layer's activations, two gradient buffers, with
    BatchNorm each hidden layer's normalised input, its inverse deviations and a copy of the
    running statistics, and with dropout each hidden layer's dropped activations."""
    # Python ints: summing NumPy ones costs microseconds a step; compiled, this function
    # saved about a microsecond a step and cost 0.3 s of a cold first step
    widths = sizes[1:].tolist()
    hidden = sum(widths[:-1])
    return (batch * (sum(widths) + 2 * max(widths)) + (batch + 3) * hidden * batchnorm
            + batch * hidden * dropout)


@njit(cache=True, error_model="numpy")
def mlp_gradient(x, t, sizes, p, g, act, lam, work, check_finite, running, momentum, eps,
                 uniforms, ratio, scale, masks):
    """The loss, and its gradient into the flat ``g`` at the flat parameters ``p``.

    ``sizes`` are the layer widths, input first; ``p`` and ``g`` hold
    ``W1, b1, [gamma1, beta1,] W2, ...`` in order, the BatchNorm ones when
    ``running`` (the flat ``running_mean1, running_var1, ...``) is not None;
    they are updated in place with ``momentum``, normalising with ``eps``.
    With ``uniforms`` (a draw per hidden unit and sample, layer after layer,
    each layer's ``(n, width)`` in C order) each hidden output is dropped where
    its draw is below ``ratio`` and scaled by ``scale`` elsewhere, the mask (0
    or ``scale``) written to ``masks``, laid out as ``uniforms``.
    With ``check_finite`` a NaN or inf in ``x`` returns NaN before anything,
    and a NaN or inf loss returns before the backward pass, with the running
    statistics as they were.  ``work`` is scratch of at
    least :func:`work_size` elements, reused from step to step (a fresh array
    of megabytes each step costs its page faults every time).
    """
    if check_finite and not all_finite(x.reshape(x.size)):  # x is C-contiguous
        return x.dtype.type(np.nan)
    n, layers = x.shape[0], sizes.size - 1
    dtype = x.dtype.type
    one, lam = dtype(1), dtype(lam)
    starts = _starts(sizes, running is not None)
    if running is not None:
        saved = _saved_statistics(work, sizes, n, running.size)
        for k in range(running.size):  # element loops: slice assignment compiles seconds more
            saved[k] = running[k]

    for layer in range(layers):
        W, b = _weights(p, starts, sizes, layer)
        z = _output(work, sizes, n, layer)
        _numpy_blas_gemm(_input(x, work, sizes, n, layer, running is not None, uniforms),
                         W, z, False, False, 1.0, 0.0)
        if layer == layers - 1:
            break
        if running is None:
            for i in range(n):
                for j in range(z.shape[1]):
                    z[i, j] = _act(z[i, j] + b[j], act, one)
        else:
            for i in range(n):
                for j in range(z.shape[1]):
                    z[i, j] += b[j]
            gamma, beta = _norm(p, starts, sizes, layer)
            mean, var = _statistics(running, sizes, layer)
            xn, inv_std = _normalised(work, sizes, n, layer)
            batchnorm_forward(z, gamma, beta, mean, var, momentum, eps, True, z, xn, inv_std)
            for i in range(n):
                for j in range(z.shape[1]):
                    z[i, j] = _act(z[i, j], act, one)
        if uniforms is not None:
            _drop(z, _per_unit(uniforms, sizes, n, layer, 0), ratio, dtype(scale),
                  _per_unit(masks, sizes, n, layer, 0), _dropped(work, sizes, n, layer,
                                                                 running is not None))
    classes = sizes[layers]
    here, there = _gradient_buffers(work, sizes, n)
    d = here[:n * classes].reshape((n, classes))
    losses = np.empty(n, dtype=x.dtype)
    _, b = _weights(p, starts, sizes, layers - 1)
    _xent_rows(_output(work, sizes, n, layers - 1), b, t, d, losses, one / dtype(n), one, 0, n)
    loss = _sum(losses) / dtype(n)
    if lam != 0:
        squares = dtype(0)
        for layer in range(layers):
            W = p[starts[layer]:starts[layer] + sizes[layer] * sizes[layer + 1]]
            squares += _dot(W, W)  # a plain loop would wait on every add in turn
        loss += dtype(0.5) * lam * squares
    if check_finite and not np.isfinite(loss):
        if running is not None:
            for k in range(running.size):
                running[k] = saved[k]
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
        a_in = _input(x, work, sizes, n, layer, running is not None, uniforms)
        _numpy_blas_gemm(a_in, d, gW, True, False, 1.0, 1.0 if lam != 0 else 0.0)
        if layer == 0:
            break
        below = there[:n * sizes[layer]].reshape((n, sizes[layer]))
        _numpy_blas_gemm(d, W, below, False, True, 1.0, 0.0)
        y = _output(work, sizes, n, layer - 1)  # the activation's output, before any dropout
        if uniforms is not None:
            mask = _per_unit(masks, sizes, n, layer - 1, 0)
            for i in range(n):
                for j in range(below.shape[1]):
                    below[i, j] = _act_backward(below[i, j] * mask[i, j], y[i, j], act, one)
        else:
            for i in range(n):
                for j in range(below.shape[1]):
                    below[i, j] = _act_backward(below[i, j], y[i, j], act, one)
        if running is not None:
            gamma, _ = _norm(p, starts, sizes, layer - 1)
            dgamma, dbeta = _norm(g, starts, sizes, layer - 1)
            xn, inv_std = _normalised(work, sizes, n, layer - 1)
            batchnorm_backward(below, xn, inv_std, gamma, True, below, dgamma, dbeta)
        here, there = there, here
        d = below
    return loss


@njit(cache=True, error_model="numpy")
def _drop(y, uniforms, ratio, scale, mask, out):
    """``out = y * mask``, the mask 0 where the draw is below ``ratio`` and ``scale`` elsewhere."""
    zero = scale - scale
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            m = scale if uniforms[i, j] >= ratio else zero
            mask[i, j] = m
            out[i, j] = y[i, j] * m


@njit(cache=True, error_model="numpy")
def _starts(sizes, batchnorm):
    """Where each layer's ``W`` starts in the flat parameters, and the end."""
    layers = sizes.size - 1
    starts = np.empty(layers + 1, dtype=np.int64)
    starts[0] = 0
    for layer in range(layers):
        width = sizes[layer + 1]
        vectors = 3 if batchnorm and layer < layers - 1 else 1  # b, and gamma and beta
        starts[layer + 1] = starts[layer] + sizes[layer] * width + vectors * width
    return starts


@njit(cache=True, error_model="numpy")
def _weights(flat, starts, sizes, layer):
    """Layer ``layer``'s ``(W, b)`` as views of the flat ``flat``."""
    rows, cols, at = sizes[layer], sizes[layer + 1], starts[layer]
    return flat[at:at + rows * cols].reshape((rows, cols)), flat[at + rows * cols:at + rows * cols + cols]


@njit(cache=True, error_model="numpy")
def _norm(flat, starts, sizes, layer):
    """Hidden layer ``layer``'s ``(gamma, beta)`` as views of the flat ``flat``."""
    cols = sizes[layer + 1]
    at = starts[layer] + sizes[layer] * cols + cols
    return flat[at:at + cols], flat[at + cols:at + 2 * cols]


@njit(cache=True, error_model="numpy")
def _statistics(running, sizes, layer):
    """Hidden layer ``layer``'s ``(running_mean, running_var)`` as views of the flat ``running``."""
    at, cols = 2 * _hidden_before(sizes, layer), sizes[layer + 1]
    return running[at:at + cols], running[at + cols:at + 2 * cols]


@njit(cache=True, error_model="numpy")
def _hidden_before(sizes, layer):
    """The widths of the hidden layers before ``layer``, summed."""
    total = 0
    for k in range(1, layer + 1):
        total += sizes[k]
    return total


@njit(cache=True, error_model="numpy")
def _gradient_buffers(work, sizes, n):
    """The two ``n x widest`` buffers the backward pass alternates between, after the outputs."""
    at, widest = _outputs_size(sizes, n)
    return work[at:at + n * widest], work[at + n * widest:at + 2 * n * widest]


@njit(cache=True, error_model="numpy")
def _normalised(work, sizes, n, layer):
    """Hidden layer ``layer``'s BatchNorm ``(xn, inv_std)`` in the scratch, after the buffers."""
    outputs, widest = _outputs_size(sizes, n)
    base, hidden, cols = outputs + 2 * n * widest, _hidden_before(sizes, sizes.size - 2), sizes[layer + 1]
    at, inv = base + n * _hidden_before(sizes, layer), base + n * hidden + _hidden_before(sizes, layer)
    return work[at:at + n * cols].reshape((n, cols)), work[inv:inv + cols]


@njit(cache=True, error_model="numpy")
def _saved_statistics(work, sizes, n, size):
    """Room for a copy of the running statistics, at the end of the scratch."""
    outputs, widest = _outputs_size(sizes, n)
    at = outputs + 2 * n * widest + (n + 1) * _hidden_before(sizes, sizes.size - 2)
    return work[at:at + size]


@njit(cache=True, error_model="numpy")
def _outputs_size(sizes, n):
    """Scratch elements of every layer's output, and the widest layer."""
    widest, total = 0, 0
    for w in sizes[1:]:
        widest = max(widest, w)
        total += n * w
    return total, widest


@njit(cache=True, error_model="numpy")
def _output(work, sizes, n, layer):
    """Layer ``layer``'s output, ``(n, sizes[layer + 1])``, in the scratch."""
    start = 0
    for k in range(1, layer + 1):
        start += n * sizes[k]
    return work[start:start + n * sizes[layer + 1]].reshape((n, sizes[layer + 1]))


@njit(cache=True, error_model="numpy")
def _dropped(work, sizes, n, layer, batchnorm):
    """Hidden layer ``layer``'s output after dropout, in the scratch after everything else."""
    outputs, widest = _outputs_size(sizes, n)
    hidden = _hidden_before(sizes, sizes.size - 2)
    return _per_unit(work, sizes, n, layer,
                     outputs + 2 * n * widest + ((n + 3) * hidden if batchnorm else 0))


@njit(cache=True, error_model="numpy")
def _per_unit(flat, sizes, n, layer, at):
    """Hidden layer ``layer``'s ``(n, width)`` in ``flat[at:]``, which holds every hidden
    layer's in turn."""
    at += n * _hidden_before(sizes, layer)
    return flat[at:at + n * sizes[layer + 1]].reshape((n, sizes[layer + 1]))


@njit(cache=True, error_model="numpy")
def _input(x, work, sizes, n, layer, batchnorm, uniforms):
    """Layer ``layer``'s input: ``x``, or the output of the layer before (after its dropout
    when there are ``uniforms``; without, this specialisation compiles no dropout)."""
    if layer == 0:
        return x
    if uniforms is not None:
        return _dropped(work, sizes, n, layer - 1, batchnorm)
    return _output(work, sizes, n, layer - 1)

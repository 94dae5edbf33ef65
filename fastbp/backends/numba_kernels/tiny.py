"""A whole SGD step of a tiny net (Affine-act-Affine-softmax) as one compiled call, no BLAS.

Copies between arrays are element loops: numba's array-to-array slice
assignment (``a[:] = b.T``) tripled this step's cold compile.  Activation
codes come from :mod:`.elementwise`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastbp.backends.numba_kernels.elementwise import _act, _act_backward, _dot, _flushed, all_finite


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _vector_sum(a):
    """A sum free to reorder, so it vectorises: a plain loop waits on each add in turn.

    The order is fixed when the kernel compiles, so results stay repeatable;
    only this single-threaded tiny step uses it.
    """
    s = a.dtype.type(0)  # not a[0] - a[0]: an inf first element would make it NaN
    for i in range(a.shape[0]):
        s += a[i]
    return s


@njit(cache=True, error_model="numpy")
def _affine_transposed(outT, aT, W, b):
    """``outT = (a @ W + b).T`` from ``a.T``, accumulating along the batch (contiguous)."""
    for j in range(W.shape[1]):
        outT[j, :] = b[j]
        for k in range(W.shape[0]):
            w = W[k, j]
            for i in range(aT.shape[1]):
                outT[j, i] += w * aT[k, i]


@njit(cache=True, error_model="numpy")
def _softmax_columns(zT, pT, shift, total):
    """Softmax of each column (sample) of ``zT`` into ``pT``.

    Also leaves each column's maximum in ``shift`` and its sum of
    ``exp(z - shift)`` in ``total``, for the loss.  With two classes the
    softmax is the logistic function of the difference: one ``exp`` per
    sample instead of two, and the same numbers (the larger score's term is
    ``exp(0) = 1`` either way).  Probabilities are flushed of subnormals, as
    in the reference.
    """
    one, tiny = zT.dtype.type(1), zT.dtype.type(np.finfo(zT.dtype).tiny)
    if zT.shape[0] == 2:
        for i in range(zT.shape[1]):
            z0, z1 = zT[0, i], zT[1, i]
            e = np.exp(-abs(z1 - z0))
            total[i] = one + e
            high, low = one / total[i], _flushed(e / total[i], tiny)
            up = z1 > z0  # selects, not branches: the loop vectorises around the exp
            shift[i] = z1 if up else z0
            pT[0, i] = low if up else high
            pT[1, i] = high if up else low
        return
    for i in range(zT.shape[1]):
        shift[i] = zT[0, i]
    for c in range(1, zT.shape[0]):
        for i in range(zT.shape[1]):
            shift[i] = max(shift[i], zT[c, i])
    total[:] = one - one
    for c in range(zT.shape[0]):
        for i in range(zT.shape[1]):
            e = np.exp(zT[c, i] - shift[i])
            pT[c, i] = e
            total[i] += e
    for c in range(zT.shape[0]):
        for i in range(zT.shape[1]):
            pT[c, i] = _flushed(pT[c, i] / total[i], tiny)


@njit(cache=True, error_model="numpy")
def _sum_of_logs(values):
    """``log(values).sum()`` for values in ``[1, C]``, as logs of products of four.

    A quarter of the ``log`` calls, which dominate a tiny step; a product of
    four softmax denominators is at most ``C**4``, far from overflow for the
    class counts of a tiny net, and rounds by a few ulp.
    """
    total = values.dtype.type(0)  # not values[0] - values[0]: inf - inf is NaN
    n4 = values.shape[0] - values.shape[0] % 4
    for i in range(0, n4, 4):
        total += np.log(values[i] * values[i + 1] * values[i + 2] * values[i + 3])
    for i in range(n4, values.shape[0]):
        total += np.log(values[i])
    return total


@njit(cache=True, error_model="numpy")
def tiny_mlp_sgd_step(x, t, W1, b1, W2, b2, act, lr, scale, check_finite):
    """One SGD step of Affine-act-Affine-softmax on a tiny net, in loops, no BLAS.

    For nets like the 2-8-2 toy, calling BLAS five times costs more than the
    arithmetic: this runs forward, backward and the update in one call.  It
    works on transposed activations (units x samples), so every inner loop runs
    along the batch and vectorises; only the weight and bias gradients are
    reductions.  All scratch arrays are views of one allocation.  ``t`` holds
    class indices; ``scale`` is ``1 / N``.  Returns the mean loss, like
    :func:`.softmax.softmax_xent`; with ``check_finite`` a NaN or inf in ``x``
    returns NaN, and a NaN or inf loss returns it, before any update; ``x`` is
    C-contiguous.
    """
    if check_finite and not all_finite(x.reshape(x.size)):
        return x.dtype.type(np.nan)
    n, d_in = x.shape
    d_hid, d_out = W2.shape
    one, lr, scale = x.dtype.type(1), x.dtype.type(lr), x.dtype.type(scale)
    zero = one - one
    h0 = d_in
    g0 = h0 + d_hid
    z0 = g0 + d_hid
    p0 = z0 + d_out
    s0 = p0 + d_out
    work = np.empty((s0 + 3, n), dtype=x.dtype)
    xT, hT, zT = work[:h0], work[h0:g0], work[z0:p0]
    gT = work[g0:z0]  # gradient at the hidden pre-activations
    dT = work[p0:s0]  # probabilities, then the gradient at zT
    shift, total, offsets = work[s0], work[s0 + 1], work[s0 + 2]

    for k in range(d_in):
        for i in range(n):
            xT[k, i] = x[i, k]
    _affine_transposed(hT, xT, W1, b1)
    for j in range(d_hid):
        for i in range(n):
            hT[j, i] = _act(hT[j, i], act, one)
    _affine_transposed(zT, hT, W2, b2)

    # loss: log(total) - (z_t - shift) per sample, the logs summed apart
    _softmax_columns(zT, dT, shift, total)
    for i in range(n):
        offsets[i] = shift[i] - zT[t[i], i]
    loss = _sum_of_logs(total) + _vector_sum(offsets)
    if check_finite and not np.isfinite(loss):
        return loss / x.dtype.type(n)  # nothing is updated from a NaN or inf loss
    for c in range(d_out):
        for i in range(n):
            dT[c, i] = (dT[c, i] - (one if t[i] == c else zero)) * scale

    gT[:] = zero
    for j in range(d_hid):
        for c in range(d_out):
            w = W2[j, c]
            for i in range(n):
                gT[j, i] += w * dT[c, i]
        for i in range(n):
            gT[j, i] = _act_backward(gT[j, i], hT[j, i], act, one)
    for c in range(d_out):
        for j in range(d_hid):
            W2[j, c] -= lr * _dot(hT[j], dT[c])
        b2[c] -= lr * _vector_sum(dT[c])
    for j in range(d_hid):
        for k in range(d_in):
            W1[k, j] -= lr * _dot(xT[k], gT[j])
        b1[j] -= lr * _vector_sum(gT[j])
    return loss / x.dtype.type(n)


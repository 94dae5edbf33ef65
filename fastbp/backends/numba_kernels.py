"""``@njit`` kernels for the numba backend: the element-wise and row-wise work around BLAS.

Conventions that keep results equal to the NumPy reference:

- Scalars arrive as Python numbers and each kernel casts them to its
  arrays' dtype (``x.dtype.type(v)``): a float64 scalar would promote
  float32 arithmetic inside numba, and NumPy scalar arguments take the
  dispatcher twice as long as Python floats.
- ``error_model="numpy"``: division by zero gives inf/nan as in NumPy instead
  of a Python exception, whose check kept loops with a division from
  vectorising (the optimizer updates ran 8x slower).
- Only the softmax + cross-entropy pass runs rows in parallel, and only from
  ``PARALLEL_MIN`` elements on (a parallel launch costs microseconds; each
  parallel kernel adds about a second to a cold compile, and on these sizes
  the element-wise passes are a few per cent of a step next to BLAS).
- Reductions across rows are plain loops in a fixed order, and the per-row
  losses are summed after the parallel loop, so no result depends on the
  number of threads.
- Copies between arrays are element loops: numba's array-to-array slice
  assignment (``a[:] = b.T``) tripled the tiny step's cold compile.

Activations are coded as ``IDENTITY``, ``RELU``, ``SIGMOID``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

IDENTITY, RELU, SIGMOID = 0, 1, 2
PARALLEL_MIN = 1 << 15
CHUNK = 64


# ------------------------------------------------------------ element-wise
@njit(cache=True, error_model="numpy")
def _sigmoid(v, one):
    # exp of a non-positive number only: no overflow in either branch.
    if v >= 0:
        return one / (one + np.exp(-v))
    e = np.exp(v)
    return e / (one + e)


@njit(cache=True, error_model="numpy")
def _act(v, act, one):
    if act == RELU:  # max(v, 0) with NaN kept, as NumPy's maximum
        return one - one if v <= 0 else v
    if act == SIGMOID:
        return _sigmoid(v, one)
    return v


@njit(cache=True, error_model="numpy")
def _act_backward(d, a, act, one):
    """The gradient ``d`` through the activation whose output is ``a``.

    ReLU passes ``d`` where ``a > 0``, gives 0 where ``a`` is 0 and NaN where
    ``a`` is NaN (``a * 0``), as the reference does.
    """
    if act == RELU:
        return d if a > 0 else a * (one - one)
    if act == SIGMOID:
        return d * (a * (one - a))
    return d


@njit(cache=True, error_model="numpy")
def bias_act_forward(z, b, act):
    """In place: ``z = act(z + b)`` for a 2-D ``z`` (the output of a matrix product)."""
    one = z.dtype.type(1)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[i, j] = _act(z[i, j] + b[j], act, one)


@njit(cache=True, error_model="numpy")
def act_backward_col_sums(d, a, act):
    """In place ``d *= act'(a)`` (``a`` is the activation's output); returns ``d.sum(axis=0)``.

    ReLU backward fused with the bias gradient of the layer below.  With
    ``IDENTITY`` it only reads ``d``: the column sums (any layer's bias gradient).
    """
    one = d.dtype.type(1)
    out = np.zeros(d.shape[1], dtype=d.dtype)
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            if act != IDENTITY:
                d[i, j] = _act_backward(d[i, j], a[i, j], act, one)
            out[j] += d[i, j]
    return out


@njit(cache=True, error_model="numpy")
def act_forward(x, out, act):
    """``out = act(x)`` (any layout)."""
    one = x.dtype.type(1)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _act(x[i, j], act, one)


@njit(cache=True, error_model="numpy")
def act_backward(dout, a, dx, act):
    """``dx = dout * act'(a)``; for ReLU ``a`` may be the mask or the output."""
    one = dout.dtype.type(1)
    for i in range(dout.shape[0]):
        for j in range(dout.shape[1]):
            dx[i, j] = _act_backward(dout[i, j], a[i, j], act, one)


@njit(cache=True, error_model="numpy")
def _flushed(v, tiny):
    """``v``, or 0 below the smallest normal ``tiny`` (NaN stays NaN): a select, not a pass."""
    return v - v if abs(v) < tiny else v


@njit(cache=True, error_model="numpy")
def _sum(values):
    """A plain loop in index order: a fixed summation order, whatever the threads."""
    total = values[0] - values[0]
    for v in values:
        total += v
    return total


# ------------------------------------------------- softmax + cross-entropy
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


# --------------------------------------------------------------- updates
SGD, MOMENTUM, NESTEROV, ADAGRAD, RMSPROP, ADAM, APPLY_VELOCITY = range(7)


@njit(cache=True, error_model="numpy")
def optimizer_update(kind, p, g, s1, s2, c):
    """One fused pass of an optimizer update, in place on flat (1-D) arrays.

    ``s1``/``s2`` are the optimizer's state (velocity, h, or Adam's m and v;
    unused ones alias ``p``) and ``c`` its constants in the arrays' dtype, in
    the order the reference applies them, so every rounding step matches it;
    the state is flushed of subnormals before the parameter reads it, as in
    the reference.  One loop per kind, with the constants in locals, so each
    loop vectorises.
    """
    n = p.size
    tiny = p.dtype.type(np.finfo(p.dtype).tiny)
    if kind == SGD:
        lr = c[0]
        for i in range(n):
            p[i] -= lr * g[i]
    elif kind == APPLY_VELOCITY:  # g is the velocity a product just made; c: lr * lambda
        decay = c[0]
        for i in range(n):
            v = _flushed(g[i] - decay * p[i], tiny)
            g[i] = v
            p[i] += v
    elif kind == MOMENTUM or kind == NESTEROV:
        lr, mu = c[0], c[1]
        for i in range(n):
            step = lr * g[i]
            v = _flushed(s1[i] * mu - step, tiny)
            s1[i] = v
            p[i] = p[i] + v if kind == MOMENTUM else p[i] - step + mu * v
    elif kind == ADAGRAD or kind == RMSPROP:
        lr, eps, decay, keep = c[0], c[1], c[2], c[3]
        for i in range(n):
            gi = g[i]
            h = _flushed(s1[i] + gi * gi if kind == ADAGRAD else s1[i] * decay + keep * (gi * gi),
                         tiny)
            s1[i] = h
            p[i] -= lr * gi / (np.sqrt(h) + eps)
    else:  # ADAM; c: corrected lr, corrected eps, beta1, 1 - beta1, beta2, 1 - beta2
        lr, eps, beta1, keep1, beta2, keep2 = c[0], c[1], c[2], c[3], c[4], c[5]
        for i in range(n):
            gi = g[i]
            m = _flushed(s1[i] * beta1 + keep1 * gi, tiny)
            v = _flushed(s2[i] * beta2 + keep2 * (gi * gi), tiny)
            s1[i] = m
            s2[i] = v
            p[i] -= lr * m / (np.sqrt(v) + eps)


# ----------------------------------------------------- a whole tiny step
@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _dot(a, b):
    """A dot product free to reorder its sum, so it vectorises (rounding ~1e-16 relative)."""
    s = a[0] - a[0]
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _vector_sum(a):
    """A sum free to reorder, so it vectorises: a plain loop waits on each add in turn.

    The order is fixed when the kernel compiles, so results stay repeatable;
    only this single-threaded tiny step uses it.
    """
    s = a[0] - a[0]
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
    total = values[0] - values[0]
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
    :func:`softmax_xent`; with ``check_finite`` a NaN or inf loss returns
    before any update.
    """
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


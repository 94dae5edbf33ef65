"""The fused optimizer updates: one pass over parameter, gradient and state per kind.

``optimizer_update``'s ``kind`` is one of the codes below.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastbp.backends.numba_kernels.elementwise import _flushed
from fastbp.backends.numba_kernels.fpmode import flush_on, restore

SGD, MOMENTUM, NESTEROV, ADAGRAD, RMSPROP, ADAM, APPLY_VELOCITY = range(7)


@njit(cache=True, error_model="numpy")
def optimizer_update(kind, p, g, s1, s2, c):
    """One fused pass of an optimizer update (:func:`_update`), with subnormals as zero.

    Decaying state and tiny gradients make subnormal intermediates, which
    slow every operation on them many times over (see :mod:`.fpmode`).
    """
    previous = flush_on()
    _update(kind, p, g, s1, s2, c)
    restore(previous)


@njit(cache=True, error_model="numpy")
def _update(kind, p, g, s1, s2, c):
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

"""The fused optimizer updates: one pass over parameter, gradient and state, a kernel per rule.

Each kernel works in place on flat (1-D) arrays, with the rule's constants
``c`` in the arrays' dtype, in the order the reference applies them, so every
rounding step matches it.  State is flushed of subnormals before the
parameter reads it (a select, as in the reference), and the pass runs with
subnormals read as zero (:mod:`.fpmode`): decaying state and tiny gradients
make subnormal intermediates, which slow every operation on them many times
over.  One kernel per rule, not one with a branch per rule: a step compiles
only the rule it uses (all seven loops in one kernel took 1.5x Adam's alone
to compile here).  Serial: on two cores a parallel pass ran 1.7-1.9x faster alone but
made a step slower (1.14-1.16x at 784-100-100-10, 1.04x at 784-1024-1024-10), its second
thread landing on the core where the step's last BLAS product left a thread spinning.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastbp.backends.numba_kernels.elementwise import _flushed
from fastbp.backends.numba_kernels.fpmode import flush_on, restore


@njit(cache=True, error_model="numpy")
def sgd(p, g, c):
    """``p -= lr * g``; c: lr."""
    previous, lr = flush_on(), c[0]
    for i in range(p.size):
        p[i] -= lr * g[i]
    restore(previous)


@njit(cache=True, error_model="numpy")
def apply_velocity(p, v, c):
    """``v -= lr * lambda * p; p += v``, for a velocity a product just made; c: lr * lambda."""
    previous, tiny, decay = flush_on(), p.dtype.type(np.finfo(p.dtype).tiny), c[0]
    for i in range(p.size):
        vi = _flushed(v[i] - decay * p[i], tiny)
        v[i] = vi
        p[i] += vi
    restore(previous)


@njit(cache=True, error_model="numpy")
def momentum(p, g, velocity, c):
    """Heavy ball; c: lr, momentum."""
    previous, tiny, lr, mu = flush_on(), p.dtype.type(np.finfo(p.dtype).tiny), c[0], c[1]
    for i in range(p.size):
        v = _flushed(velocity[i] * mu - lr * g[i], tiny)
        velocity[i] = v
        p[i] = p[i] + v
    restore(previous)


@njit(cache=True, error_model="numpy")
def nesterov(p, g, velocity, c):
    """Nesterov momentum; c: lr, momentum."""
    previous, tiny, lr, mu = flush_on(), p.dtype.type(np.finfo(p.dtype).tiny), c[0], c[1]
    for i in range(p.size):
        step = lr * g[i]
        v = _flushed(velocity[i] * mu - step, tiny)
        velocity[i] = v
        p[i] = p[i] - step + mu * v
    restore(previous)


@njit(cache=True, error_model="numpy")
def adagrad(p, g, h, c):
    """c: lr, eps."""
    previous, tiny, lr, eps = flush_on(), p.dtype.type(np.finfo(p.dtype).tiny), c[0], c[1]
    for i in range(p.size):
        gi = g[i]
        hi = _flushed(h[i] + gi * gi, tiny)
        h[i] = hi
        p[i] -= lr * gi / (np.sqrt(hi) + eps)
    restore(previous)


@njit(cache=True, error_model="numpy")
def rmsprop(p, g, h, c):
    """c: lr, eps, decay, 1 - decay."""
    previous, tiny = flush_on(), p.dtype.type(np.finfo(p.dtype).tiny)
    lr, eps, decay, keep = c[0], c[1], c[2], c[3]
    for i in range(p.size):
        gi = g[i]
        hi = _flushed(h[i] * decay + keep * (gi * gi), tiny)
        h[i] = hi
        p[i] -= lr * gi / (np.sqrt(hi) + eps)
    restore(previous)


@njit(cache=True, error_model="numpy")
def adam(p, g, m, v, c):
    """c: corrected lr, corrected eps, beta1, 1 - beta1, beta2, 1 - beta2."""
    previous, tiny = flush_on(), p.dtype.type(np.finfo(p.dtype).tiny)
    lr, eps, beta1, keep1, beta2, keep2 = c[0], c[1], c[2], c[3], c[4], c[5]
    for i in range(p.size):
        gi = g[i]
        mi = _flushed(m[i] * beta1 + keep1 * gi, tiny)
        vi = _flushed(v[i] * beta2 + keep2 * (gi * gi), tiny)
        m[i] = mi
        v[i] = vi
        p[i] -= lr * mi / (np.sqrt(vi) + eps)
    restore(previous)


@njit(cache=True)
def claim_lines(bits, zero):
    """Store once into every 64-byte cache line of ``bits``, changing no bit (``|= zero``, a
    zero the compiler cannot see), so this core owns the lines before an update pass.

    ``bits`` is an integer view of the parameters, which the step's two-thread
    products have just read on the other core as well.  The update pass's
    stores, queued behind its arithmetic, wait for those lines a few at a
    time; bare stores let the core fetch many at once.  At 784-100-100-10
    (float64, Zen 4) the Adam pass right after the gradient kernel took 117
    µs (86 alone), and 486 µs while the host's core-to-core latency was
    high; claimed first, 25 + 86 and 146 + 94 µs.
    """
    for i in range(0, bits.size, 64 // bits.itemsize):
        bits[i] |= zero

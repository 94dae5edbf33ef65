"""Numerical differentiation, to check backprop against.

Use float64: with ``h = 1e-4`` the central difference has a truncation error of
order ``h**2`` and a rounding error of order ``eps / h``, which in float32 is
already about 1e-3.

ReLU kinks: when a pre-activation lies within ``h`` of zero, ``x + h`` and
``x - h`` fall on different sides of the kink and the central difference of
that one element is wrong by up to half the local slope, so a single
element-wise error can be large while backprop is right.  The checks here
therefore compare whole arrays with a norm-based relative error, where one
kink-crossing element among thousands barely moves the result; with random
float64 data the chance of a pre-activation within 1e-4 of zero is about
1e-4 per unit, so a small seeded net checks below 1e-7.  If a check on your
own data fails, try a smaller ``h`` or a smooth activation (sigmoid) before
suspecting backprop.
"""

from __future__ import annotations

import math

import numpy

from fastbp.backends import to_numpy


def rel_error(a, b, floor=0.0) -> float:
    """``||a - b|| / max(||a||, ||b||, floor)``, and 0 when that is 0."""
    a = to_numpy(a).astype(numpy.float64)
    b = to_numpy(b).astype(numpy.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ: {a.shape} and {b.shape}")
    scale = max(numpy.linalg.norm(a), numpy.linalg.norm(b), floor)
    return 0.0 if scale == 0 else float(numpy.linalg.norm(a - b) / scale)


def numerical_gradient(f, x, h=1e-4):
    """Central differences of the scalar ``f(x)`` with respect to every element of ``x``.

    ``x`` is perturbed in place, one element at a time, and restored; it must
    be C-contiguous so the perturbation reaches whatever shares its memory (a
    net's layers).  Works on NumPy and CuPy arrays alike.
    """
    if not x.flags.c_contiguous:
        raise ValueError("numerical_gradient: x must be C-contiguous (it is perturbed in place)")
    flat = x.reshape(-1)
    grad = flat.copy()
    for i in range(flat.size):
        original = flat[i].copy()
        try:
            flat[i] = original + h
            f_plus = float(f(x))
            flat[i] = original - h
            f_minus = float(f(x))
        finally:  # an error or Ctrl-C in f leaves x as it was
            flat[i] = original
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad.reshape(x.shape)


def gradient_check(net, x, t, h=1e-4, numerical_net=None) -> dict:
    """``{key: rel_error(backprop, numerical)}`` for every parameter of ``net``.

    Each array is measured against its own norm, but never against less than
    1e-4 of the whole net's gradient norm: a bias right before a BatchNorm has
    a true gradient of 0, which backprop gives as rounding noise (1e-17) and
    central differences as theirs (1e-12), and an error relative to noise
    alone would be anything up to 100%.  Dropout masks are fixed, and the
    BatchNorm running statistics are as they were afterwards.

    ``numerical_net``, a net of the same architecture at the same weights, is
    differentiated instead of ``net``: a float64 copy checks a float32 net's
    backprop against the float64 truth (float32's own central differences are
    wrong by 1e-3 to 1e-2, more than any error they could find).
    """
    differentiated = numerical_net or net
    with net.repeatable_training_passes():
        backprop = net.gradient(x, t)
    with differentiated.repeatable_training_passes():
        numerical = differentiated.numerical_gradient(x, t, h)
    floor = 1e-4 * math.sqrt(sum(float(numpy.linalg.norm(to_numpy(g))) ** 2
                                 for g in backprop.values()))
    return {key: rel_error(backprop[key], numerical[key], floor) for key in backprop}


def directional_check(net, x, t, n_directions=3, h=None, seed=0, numerical_net=None) -> list:
    """Relative errors of ``grad . v`` against ``(L(p + h v) - L(p - h v)) / 2h``.

    Each random unit direction ``v`` spans every parameter at once, so the check
    costs two forward passes per direction whatever the size of the net.
    Dropout masks stay fixed and BatchNorm statistics are restored, as in
    ``net.numerical_gradient``.  ``h`` defaults to 1e-5 in float64 and 5e-3
    in float32 (about the cube root of the dtype's epsilon, where truncation
    and rounding errors balance; 1e-5 in float32 is all rounding noise).
    ``numerical_net`` takes the differences instead of ``net``, as in
    ``gradient_check``.
    """
    shifted = numerical_net or net
    if h is None:
        h = 1e-5 if numpy.dtype(shifted.dtype) == numpy.float64 else 5e-3
    with net.repeatable_training_passes():
        grads = {k: to_numpy(g).astype(numpy.float64) for k, g in net.gradient(x, t).items()}
    with shifted.repeatable_training_passes():
        return _directional_errors(shifted, x, t, grads, n_directions, h, seed)


def _directional_errors(net, x, t, grads, n_directions, h, seed):
    rng = numpy.random.default_rng(seed)
    errors = []
    for _ in range(n_directions):
        v = {k: rng.standard_normal(p.shape) for k, p in net.params.items()}
        norm = math.sqrt(sum(float((d ** 2).sum()) for d in v.values()))
        v = {k: d / norm for k, d in v.items()}
        analytic = sum(float((grads[k] * v[k]).sum()) for k in v)
        v = {k: net.backend.asarray(d, dtype=net.params[k].dtype) for k, d in v.items()}
        numeric = (_shifted_loss(net, x, t, v, h) - _shifted_loss(net, x, t, v, -h)) / (2 * h)
        scale = max(abs(analytic), abs(numeric))
        errors.append(0.0 if scale == 0 else abs(analytic - numeric) / scale)
    return errors


def _shifted_loss(net, x, t, v, step):
    """``L(p + step * v)``, restoring the parameters exactly afterwards."""
    saved = {k: p.copy() for k, p in net.params.items()}
    try:
        for k, p in net.params.items():
            p += step * v[k]
        return float(net.loss(x, t, train_flg=True))
    finally:
        for k, p in net.params.items():
            p[...] = saved[k]

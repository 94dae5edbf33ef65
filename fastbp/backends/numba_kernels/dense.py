"""A dense layer's element-wise passes around its product: bias + activation, their backward.

Activation codes come from :mod:`.elementwise`.  The column sums (bias
gradients) are plain loops over rows in index order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastbp.backends.numba_kernels.elementwise import IDENTITY, _act, _act_backward


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

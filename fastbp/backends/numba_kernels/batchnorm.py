"""BatchNorm forward and backward over a batch of rows, in the reference's order of operations.

Statistics are column sums over the rows in index order (the loops run along
a row, so they vectorise); the reference's formulas, step for step, so the
results agree to rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _column_means(x, out):
    out[:] = 0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[j] += x[i, j]
    out /= x.dtype.type(x.shape[0])


@njit(cache=True, error_model="numpy")
def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, train,
                      out, xn, inv_std):
    """Fill ``out``, ``xn`` and ``inv_std`` (see ``NumpyBackend.batchnorm_forward``).

    Training normalises by the batch statistics (biased variance) and folds
    them into the running ones in place; inference uses the running ones.
    """
    n, d = x.shape
    dtype = x.dtype.type
    momentum, eps, one = dtype(momentum), dtype(eps), dtype(1)
    mean = np.empty(d, dtype=x.dtype)
    if train:
        _column_means(x, mean)
        for i in range(n):
            for j in range(d):
                xn[i, j] = x[i, j] - mean[j]  # centred; normalised below
        var = np.zeros(d, dtype=x.dtype)
        for i in range(n):
            for j in range(d):
                var[j] += xn[i, j] * xn[i, j]
        var /= dtype(n)
        for j in range(d):
            running_mean[j] = running_mean[j] * momentum + (one - momentum) * mean[j]
            running_var[j] = running_var[j] * momentum + (one - momentum) * var[j]
    else:
        var = running_var.copy()
        for i in range(n):
            for j in range(d):
                xn[i, j] = x[i, j] - running_mean[j]
    for j in range(d):
        inv_std[j] = one / np.sqrt(var[j] + eps)
    for i in range(n):
        for j in range(d):
            xn[i, j] = xn[i, j] * inv_std[j]
            out[i, j] = gamma[j] * xn[i, j] + beta[j]


@njit(cache=True, error_model="numpy")
def batchnorm_backward(dout, xn, inv_std, gamma, train, dx, dgamma, dbeta):
    """Fill ``dx``, ``dgamma`` and ``dbeta`` (see ``NumpyBackend.batchnorm_backward``)."""
    n, d = dout.shape
    dtype = dout.dtype.type
    dgamma[:] = 0
    dbeta[:] = 0
    for i in range(n):
        for j in range(d):
            dbeta[j] += dout[i, j]
            dgamma[j] += dout[i, j] * xn[i, j]
    if not train:
        for i in range(n):
            for j in range(d):
                dx[i, j] = dout[i, j] * (gamma[j] * inv_std[j])
        return
    count = dtype(n)
    scale = np.empty(d, dtype=dout.dtype)
    for j in range(d):
        scale[j] = gamma[j] * inv_std[j] / count
    for i in range(n):
        for j in range(d):
            dx[i, j] = scale[j] * (count * dout[i, j] - dbeta[j] - xn[i, j] * dgamma[j])

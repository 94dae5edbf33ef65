"""The baseline: the net and optimizers as the textbook writes them, in plain NumPy.

This is the code fastbp starts from ("Deep Learning from Scratch": its
``MultiLayerNetExtend``, layers and ``optimizer.py``), kept here so that every
speed-up is measured against it: one class per layer, ReLU through a boolean
mask, softmax and cross-entropy as separate functions, BatchNorm through the
book's chain of intermediate gradients, weight decay added to each ``dW``, and
optimizers that loop ``for key in params``.  Every Affine layer computes its
input gradient, so a step does ``3L`` matrix products (the first layer's
``dx`` is computed and thrown away).

Three departures, none of which changes the work done: the weight-decay
terms are skipped when ``weight_decay_lambda`` is 0 (the book adds ``0 * W``);
Adam's ``eps`` is scaled by the same bias correction as its ``lr_t``, and
AdaGrad's and RMSprop's ``eps`` is an argument (the book adds a fixed
``1e-7``); Nesterov applies the velocity from before its update, as the
book's derivation does (its class applies the new one).  So every update is
PyTorch's and fastbp's to rounding.  Scalars are Python floats, so float32
stays float32.
"""

from __future__ import annotations

import math

import numpy as np

# ------------------------------------------------------------------ layers


class Relu:
    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return np.dot(x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx


class Dropout:
    """The book's: drops ``dropout_ratio`` of the units in training, unscaled, and scales by
    what it keeps at inference; a seeded generator where the book calls ``np.random.rand``."""

    def __init__(self, dropout_ratio, rng):
        self.dropout_ratio, self.rng = dropout_ratio, rng

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = self.rng.random(x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask


class BatchNormalization:
    """The book's BatchNorm; ``eps`` is its ``10e-7`` (that is 1e-6)."""

    def __init__(self, gamma, beta, momentum=0.9):
        self.gamma, self.beta, self.momentum = gamma, beta, momentum
        self.running_mean = self.running_var = None

    def forward(self, x, train_flg=True):
        if self.running_mean is None:
            self.running_mean = np.zeros(x.shape[1], x.dtype)
            self.running_var = np.zeros(x.shape[1], x.dtype)
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = np.mean(xc ** 2, axis=0)
            std = np.sqrt(var + 10e-7)
            xn = xc / std
            self.batch_size, self.xc, self.xn, self.std = x.shape[0], xc, xn, std
            self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
            self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        else:
            xn = (x - self.running_mean) / np.sqrt(self.running_var + 10e-7)
        return self.gamma * xn + self.beta

    def backward(self, dout):
        dbeta = dout.sum(axis=0)
        dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -np.sum((dxn * self.xc) / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc += (2.0 / self.batch_size) * self.xc * dvar
        dmu = np.sum(dxc, axis=0)
        dx = dxc - dmu / self.batch_size
        self.dgamma, self.dbeta = dgamma, dbeta
        return dx


def softmax(x):
    x = x - np.max(x, axis=1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=1, keepdims=True)


def cross_entropy_error(y, t):
    """Batch mean; ``t`` holds class indices.  The 1e-7 guards log(0), as in the book."""
    n = y.shape[0]
    return -np.sum(np.log(y[np.arange(n), t] + 1e-7)) / n


class SoftmaxWithLoss:
    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        return cross_entropy_error(self.y, t)

    def backward(self, dout=1):
        n = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        return dx * dout / n


# --------------------------------------------------------------------- net


class TextbookNet:
    """Affine -> [BatchNorm] -> Relu -> [Dropout] -> ... -> Affine -> SoftmaxWithLoss on copies of
    ``params``.

    The depth comes from the keys ``W1 ... WL``; BatchNorm follows every hidden
    Affine when ``params`` holds ``gamma1`` (``gamma{i}``, ``beta{i}``), and a
    Dropout every hidden Relu when ``dropout_ratio`` is given.  The layers share
    the arrays of ``self.params``, which the optimizers update in place.
    """

    def __init__(self, params, weight_decay_lambda=0.0, dropout_ratio=None, seed=0):
        self.params = {key: np.array(value) for key, value in params.items()}
        self.weight_decay_lambda = weight_decay_lambda
        p, self.n_layers = self.params, sum(1 for key in params if key.startswith("W"))
        rng = np.random.default_rng(seed)
        self.layers = {}
        for i in range(1, self.n_layers + 1):
            self.layers[f"Affine{i}"] = Affine(p[f"W{i}"], p[f"b{i}"])
            if i < self.n_layers:
                if f"gamma{i}" in p:
                    self.layers[f"BatchNorm{i}"] = BatchNormalization(p[f"gamma{i}"], p[f"beta{i}"])
                self.layers[f"Relu{i}"] = Relu()
                if dropout_ratio is not None:
                    self.layers[f"Dropout{i}"] = Dropout(dropout_ratio, rng)
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x, train_flg=False):
        for key, layer in self.layers.items():
            x = (layer.forward(x, train_flg) if key.startswith(("BatchNorm", "Dropout"))
                 else layer.forward(x))
        return x

    def loss(self, x, t, train_flg=False):
        loss = self.last_layer.forward(self.predict(x, train_flg), t)
        if self.weight_decay_lambda:
            for i in range(1, self.n_layers + 1):
                loss += 0.5 * self.weight_decay_lambda * np.sum(self.params[f"W{i}"] ** 2)
        return loss

    def gradient(self, x, t):
        return self._loss_and_gradient(x, t)[1]

    def _loss_and_gradient(self, x, t):
        loss = self.loss(x, t, train_flg=True)
        dout = self.last_layer.backward(1)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)
        grads = {}
        for i in range(1, self.n_layers + 1):
            affine = self.layers[f"Affine{i}"]
            grads[f"W{i}"] = affine.dW
            if self.weight_decay_lambda:
                grads[f"W{i}"] = affine.dW + self.weight_decay_lambda * self.params[f"W{i}"]
            grads[f"b{i}"] = affine.db
            if f"BatchNorm{i}" in self.layers:
                batchnorm = self.layers[f"BatchNorm{i}"]
                grads[f"gamma{i}"], grads[f"beta{i}"] = batchnorm.dgamma, batchnorm.dbeta
        return loss, grads

    def train_step(self, x, t, optimizer):
        """One step of the textbook's training loop; returns the loss before it."""
        loss, grads = self._loss_and_gradient(x, t)
        optimizer.update(self.params, grads)
        return loss


# -------------------------------------------------------------- optimizers


def _zeros_like(params):
    """The state an optimizer starts from: a zero array per parameter."""
    return {key: np.zeros_like(value) for key, value in params.items()}


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params:
            params[key] -= self.lr * grads[key]


class Momentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr, self.momentum, self.v = lr, momentum, None

    def update(self, params, grads):
        if self.v is None:
            self.v = _zeros_like(params)
        for key in params:
            self.v[key] = self.momentum * self.v[key] - self.lr * grads[key]
            params[key] += self.v[key]


class Adam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.iter, self.m, self.v = 0, None, None

    def update(self, params, grads):
        if self.m is None:
            self.m = _zeros_like(params)
            self.v = _zeros_like(params)
        self.iter += 1
        correction = math.sqrt(1.0 - self.beta2 ** self.iter)
        lr_t = self.lr * correction / (1.0 - self.beta1 ** self.iter)
        eps_t = self.eps * correction
        for key in params:
            self.m[key] += (1 - self.beta1) * (grads[key] - self.m[key])
            self.v[key] += (1 - self.beta2) * (grads[key] ** 2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + eps_t)


class Nesterov(Momentum):
    def update(self, params, grads):
        if self.v is None:
            self.v = _zeros_like(params)
        for key in params:
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]


class AdaGrad:
    def __init__(self, lr=0.01, eps=1e-7):
        self.lr, self.eps, self.h = lr, eps, None

    def update(self, params, grads):
        if self.h is None:
            self.h = _zeros_like(params)
        for key in params:
            self.h[key] += grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + self.eps)


class RMSprop:
    def __init__(self, lr=0.01, decay_rate=0.99, eps=1e-7):
        self.lr, self.decay_rate, self.eps, self.h = lr, decay_rate, eps, None

    def update(self, params, grads):
        if self.h is None:
            self.h = _zeros_like(params)
        for key in params:
            self.h[key] *= self.decay_rate
            self.h[key] += (1 - self.decay_rate) * grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + self.eps)

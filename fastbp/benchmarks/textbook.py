"""The baseline: the two-layer net as the textbook writes it, in plain NumPy.

This is the code fastbp starts from, kept here so that every speed-up is
measured against it: one class per layer, ReLU through a boolean mask,
softmax and cross-entropy as separate functions, SGD as ``p -= lr * g``, and
an Affine layer that always computes its input gradient, so a step does six
matrix products (the first layer's ``dx`` is computed and thrown away).
"""

from __future__ import annotations

import numpy as np


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


class TextbookNet:
    """Affine -> Relu -> Affine -> SoftmaxWithLoss on its own copies of ``params``."""

    def __init__(self, params):
        self.params = {key: np.array(value) for key, value in params.items()}
        self.layers = [Affine(self.params["W1"], self.params["b1"]), Relu(),
                       Affine(self.params["W2"], self.params["b2"])]
        self.last_layer = SoftmaxWithLoss()

    def loss(self, x, t):
        for layer in self.layers:
            x = layer.forward(x)
        return self.last_layer.forward(x, t)

    def gradient(self, x, t):
        return self._loss_and_gradient(x, t)[1]

    def _loss_and_gradient(self, x, t):
        loss = self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        first, _, second = self.layers
        return loss, {"W1": first.dW, "b1": first.db, "W2": second.dW, "b2": second.db}

    def train_step(self, x, t, lr):
        """One SGD step, as the textbook's training loop does it; returns the loss before it."""
        loss, grads = self._loss_and_gradient(x, t)
        for key in self.params:
            self.params[key] -= lr * grads[key]
        return loss

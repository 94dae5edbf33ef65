"""The textbook layers: ``forward`` caches what ``backward`` needs.

Each layer is a few lines; the arithmetic lives in the backend's hot paths, so
the same layer runs on NumPy, Numba or CuPy.  Losses are batch means and
their ``backward`` returns ``(y - t) / N`` times the incoming ``dout``.
"""

from __future__ import annotations

from fastbp.backends import get_backend


class MulLayer:
    """``out = x * y`` (scalars or arrays alike)."""

    def forward(self, x, y):
        self.x, self.y = x, y
        return x * y

    def backward(self, dout):
        return dout * self.y, dout * self.x


class AddLayer:
    """``out = x + y``."""

    def forward(self, x, y):
        return x + y

    def backward(self, dout):
        return dout * 1, dout * 1


class ReLU:
    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self.mask = None

    def forward(self, x):
        out, self.mask = self.backend.relu_forward(x)
        return out

    def backward(self, dout):
        return self.backend.relu_backward(dout, self.mask)


class Sigmoid:
    """Logistic sigmoid, overflow-safe for large negative inputs."""

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self.out = None

    def forward(self, x):
        self.out = self.backend.sigmoid_forward(x)
        return self.out

    def backward(self, dout):
        return self.backend.sigmoid_backward(dout, self.out)


class Affine:
    """``out = x @ W + b`` on a batch; inputs of any rank are flattened to 2-D.

    ``W`` and ``b`` are used in place (a net's ``params`` share them), and
    ``backward`` stores ``dW`` and ``db``.  With ``need_dx=False`` (the first
    layer of a net) ``backward`` skips the input gradient and returns None.
    """

    def __init__(self, W, b, backend=None, need_dx=True):
        self.backend = get_backend(backend)
        self.W, self.b = W, b
        self.need_dx = need_dx
        self.x = self.original_x_shape = None
        self.dW = self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.W.shape[0]:
            raise ValueError(
                f"Affine.forward: expected inputs with {self.W.shape[0]} features "
                f"(W has shape {tuple(self.W.shape)}), received shape {tuple(self.original_x_shape)}"
            )
        self.x = x
        return self.backend.affine_forward(x, self.W, self.b)

    def backward(self, dout):
        dx, self.dW, self.db = self.backend.affine_backward(dout, self.x, self.W, self.need_dx)
        return None if dx is None else dx.reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax followed by the batch-mean cross-entropy ``logsumexp(x) - x[t]``.

    ``t`` is class indices ``(N,)`` or one-hot ``(N, C)``.  No epsilon enters a
    log, so the loss and its gradient agree to rounding even for logits of 1000.
    """

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        self.t = t
        self.loss, self.y = self.backend.softmax_cross_entropy(x, t)
        return self.loss

    def backward(self, dout=1):
        return self.backend.softmax_cross_entropy_backward(self.y, self.t) * dout


class IdentityWithLoss:
    """Identity output with the batch mean of ``0.5 * sum((y - t)**2)``.

    Class indices are turned into one-hot rows so ``t`` works as for softmax.
    """

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        xp = self.backend.xp
        if t.ndim == 1 and x.ndim == 2 and x.shape[1] > 1:
            t = xp.eye(x.shape[1], dtype=x.dtype)[t]
        self.y, self.t = x, t.reshape(x.shape)
        self.loss = 0.5 * ((self.y - self.t) ** 2).sum() / x.shape[0]
        return self.loss

    def backward(self, dout=1):
        return (self.y - self.t) * (dout / self.y.shape[0])

"""The textbook layers: ``forward`` caches what ``backward`` needs.

Each layer is a few lines; the arithmetic lives in the backend's hot paths, so
the same layer runs on NumPy, Numba or CuPy.  Losses are batch means and
their ``backward`` returns ``(y - t) / N`` times the incoming ``dout``.
"""

from __future__ import annotations

from fastbp.backends import get_backend
from fastbp.checks import check_number, check_real, check_targets


def _forward_first(layer, cached):
    """What ``layer.forward`` cached for ``backward``; a clear error when it has not run."""
    if cached is None:
        raise RuntimeError(f"{type(layer).__name__}.backward: call forward first (backward uses "
                           "what forward caches)")
    return cached


def _dout_array(layer, dout, like, shape=None):
    """``dout`` as an array: a number (Python's or NumPy's) or a list takes the dtype of
    ``like`` (what forward cached), so every backend takes the same inputs and float32 stays
    float32.  Given the ``shape`` of the last forward's output, a number becomes an array of
    it (the gradient of the output's sum, scaled) and another shape is refused by the layer's
    name."""
    if not hasattr(dout, "shape") or dout.ndim == 0:
        dout = layer.backend.asarray(dout, dtype=like.dtype)
    if shape is not None and dout.ndim == 0:
        dout = layer.backend.xp.full(shape, dout.item(), dtype=like.dtype)
    if shape is not None and tuple(dout.shape) != tuple(shape):
        raise ValueError(f"{type(layer).__name__}.backward: expected dout of shape {tuple(shape)} "
                         f"(the last forward's output), received {tuple(dout.shape)}")
    return dout


class MulLayer:
    """``out = x * y`` (scalars or arrays alike)."""

    def __init__(self):
        self.x = self.y = None

    def forward(self, x, y):
        self.x, self.y = x, y
        return x * y

    def backward(self, dout):
        return dout * _forward_first(self, self.y), dout * self.x


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
        out, self.mask = self.backend.relu_forward(self.backend.ensure_array(x, "ReLU.forward"))
        return out

    def backward(self, dout):
        mask = _forward_first(self, self.mask)
        return self.backend.relu_backward(_dout_array(self, dout, mask, mask.shape), mask)


class Sigmoid:
    """Logistic sigmoid, overflow-safe for large negative inputs."""

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self.out = None

    def forward(self, x):
        self.out = self.backend.sigmoid_forward(self.backend.ensure_array(x, "Sigmoid.forward"))
        return self.out

    def backward(self, dout):
        out = _forward_first(self, self.out)
        return self.backend.sigmoid_backward(_dout_array(self, dout, out, out.shape), out)


class Affine:
    """``out = x @ W + b`` on a batch; inputs of any rank are flattened to 2-D.

    ``W`` and ``b`` are used in place (a net's ``params`` share them), and
    ``backward`` stores ``dW`` and ``db``.  With ``need_dx=False`` (the first
    layer of a net) ``backward`` skips the input gradient and returns None.
    """

    def __init__(self, W, b, backend=None, need_dx=True):
        self.backend = get_backend(backend)
        W, b = self.backend.ensure_array(W, "Affine"), self.backend.ensure_array(b, "Affine")
        if W.ndim != 2 or b.shape != W.shape[1:]:
            raise ValueError(f"Affine: expected W of shape (inputs, outputs) and b of shape "
                             f"(outputs,), received W {tuple(W.shape)} and b {tuple(b.shape)}")
        self.W, self.b = W, b
        self.need_dx = need_dx
        self.x = self.original_x_shape = None
        self.dW = self.db = None

    def forward(self, x):
        x = self.backend.ensure_array(x, "Affine.forward")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"Affine.forward: expected a batch of N >= 1 rows, received shape "
                             f"{tuple(x.shape)}")
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
        x = _forward_first(self, self.x)
        dout = _dout_array(self, dout, x, (x.shape[0], self.W.shape[1]))
        dx, self.dW, self.db = self.backend.affine_backward(dout, x, self.W, self.need_dx)
        return None if dx is None else dx.reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax followed by the batch-mean cross-entropy ``logsumexp(x) - x[t]``.

    ``t`` is class indices ``(N,)`` or one-hot ``(N, C)``.  No epsilon enters a
    log, so the loss and its gradient agree to rounding even for logits of 1000.
    """

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self.loss = self.y = self.t = None

    def forward(self, x, t, check_labels=True):
        """The loss; ``check_labels=False`` skips the label range test, for labels already
        checked (a net's, whose every method checks them first)."""
        where, be = "SoftmaxWithLoss.forward", self.backend
        x, t = be.ensure_array(x, where), be.ensure_array(t, where)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{where}: expected scores x of shape (N, C) with N >= 1, received "
                             f"shape {tuple(x.shape)}")
        self.t = check_targets(where, t, x.shape[0], x.shape[1], be, x.dtype, check_labels)
        self.loss, self.y = self.backend.softmax_cross_entropy(x, self.t)
        return self.loss

    def backward(self, dout=1):
        y = _forward_first(self, self.y)
        return self.backend.softmax_cross_entropy_backward(y, self.t) * _dout_array(self, dout, y)


class IdentityWithLoss:
    """Identity output with the batch mean of ``0.5 * sum((y - t)**2)``.

    ``t`` has the shape of ``x`` (any shape, the batch first); for ``x`` of
    shape ``(N, C)`` it may also be ``(N,)``: class indices, turned into one-hot
    rows as for softmax (or with ``C = 1``, one target per row).
    """

    def __init__(self, backend=None):
        self.backend = get_backend(backend)
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        where = "IdentityWithLoss.forward"
        be = self.backend
        x, t = be.ensure_array(x, where), be.ensure_array(t, where)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{where}: expected outputs x with a batch of N >= 1 rows, received "
                             f"shape {tuple(x.shape)}")
        if t.shape == x.shape:
            check_real(where, "t", t)
            t = t.astype(x.dtype, copy=False)  # float32 stays float32
        else:
            if x.ndim != 2 or t.ndim != 1:
                raise ValueError(f"{where}: expected t of shape {tuple(x.shape)}, received shape "
                                 f"{tuple(t.shape)}")
            n, c = x.shape
            t = (t.reshape(n, 1) if c == 1 and t.shape == (n,) else
                 be.xp.eye(c, dtype=x.dtype)[check_targets(where, t, n, c, be, x.dtype)])
        self.y, self.t = x, t
        self.loss = 0.5 * ((self.y - self.t) ** 2).sum() / x.shape[0]
        return self.loss

    def backward(self, dout=1):
        y = _forward_first(self, self.y)
        return (y - self.t) * (_dout_array(self, dout, y) / y.shape[0])


class Dropout:
    """Inverted dropout: training zeroes each unit with probability ``dropout_ratio``
    and scales the kept ones by ``1 / (1 - dropout_ratio)``, so inference is the
    identity and the expected activation is the same in both modes.

    The mask is drawn from the backend's generator seeded by ``seed``.  With
    ``fixed_mask = True`` a training forward reuses the last mask whenever
    its shape fits, which makes the loss deterministic for gradient checks.
    """

    def __init__(self, dropout_ratio=0.5, backend=None, seed=None):
        self.dropout_ratio = check_number("Dropout", "dropout_ratio", dropout_ratio, "in [0, 1)",
                                          lambda r: 0 <= r < 1)
        self.backend = get_backend(backend)
        self.seed = seed
        self.rng = self.backend.rng(seed)
        self.mask = None  # the kept units, already scaled; backward multiplies by it
        self.fixed_mask = False
        self.train_flg = True  # of the last forward: backward follows the same mode

    def forward(self, x, train_flg=True):
        x = self.backend.ensure_array(x, "Dropout.forward")
        self.train_flg = train_flg
        if not train_flg:  # the last training mask stays, for fixed_mask
            return x
        if not (self.fixed_mask and self.mask is not None and self.mask.shape == x.shape):
            keep = self.rng.random(x.shape) >= self.dropout_ratio
            self.mask = keep.astype(x.dtype if x.dtype.kind == "f" else "float64")
            self.mask *= self.scale
        return x * self.mask

    @property
    def scale(self) -> float:
        """What a kept unit is multiplied by: ``1 / (1 - dropout_ratio)``."""
        return 1 / (1 - self.dropout_ratio)

    def backward(self, dout):
        """Through the mask of a training forward; the identity after an inference one."""
        if self.mask is None or not self.train_flg:
            return dout
        return _dout_array(self, dout, self.mask, self.mask.shape) * self.mask


class BatchNorm:
    """Normalise each feature over the batch, then ``gamma * xn + beta`` (DLFS BatchNormalization).

    Training (``train_flg=True``) uses the batch statistics and updates
    ``running_mean`` and ``running_var`` in place (``r = momentum * r + (1 -
    momentum) * batch``), so arrays shared with a net's ``buffers`` follow;
    inference uses the running statistics.  They start at 0 and 1 (the
    textbook and CS231n start the variance at 0, which makes early inference
    outputs explode), and ``running_var`` follows the biased batch variance,
    the one training normalises by (PyTorch's keeps the unbiased one, ``N /
    (N - 1)`` times larger).  ``eps`` is the textbook's ``10e-7``.  Inputs of
    any rank are flattened to ``(N, features)``; ``backward`` stores
    ``dgamma`` and ``dbeta``.
    """

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None,
                 backend=None, eps=1e-6):
        self.backend = get_backend(backend)
        gamma, beta = (self.backend.ensure_array(a, "BatchNorm") for a in (gamma, beta))
        self.momentum = check_number("BatchNorm", "momentum", momentum, "in [0, 1]",
                                     lambda m: 0 <= m <= 1)
        self.eps = check_number("BatchNorm", "eps", eps, "> 0", lambda e: e > 0)
        xp = self.backend.xp
        running_mean = xp.zeros_like(gamma) if running_mean is None else running_mean
        running_var = xp.ones_like(gamma) if running_var is None else running_var
        shapes = [tuple(a.shape) for a in (gamma, beta, running_mean, running_var)]
        if len(shapes[0]) != 1 or len(set(shapes)) != 1:
            raise ValueError("BatchNorm: gamma, beta, running_mean and running_var must be 1-D "
                             f"of one shape, received {', '.join(map(str, shapes))}")
        self.gamma, self.beta = gamma, beta
        self.running_mean, self.running_var = running_mean, running_var
        self.input_shape = self.xn = self.inv_std = self.train_flg = None
        self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        x = self.backend.ensure_array(x, "BatchNorm.forward")
        self.input_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.gamma.shape[0]:
            raise ValueError(f"BatchNorm.forward: expected inputs with {self.gamma.shape[0]} "
                             f"features, received shape {tuple(self.input_shape)}")
        if train_flg and x.shape[0] < 2:
            raise ValueError(f"BatchNorm.forward: training needs a batch of at least 2 samples "
                             f"(one sample's variance is 0, so it would normalise to 0 whatever "
                             f"it is), received shape {tuple(self.input_shape)}")
        self.train_flg = train_flg
        out, self.xn, self.inv_std = self.backend.batchnorm_forward(
            x, self.gamma, self.beta, self.running_mean, self.running_var, self.momentum,
            self.eps, train_flg)
        return out.reshape(self.input_shape)

    def backward(self, dout):
        xn = _forward_first(self, self.xn)
        dout = _dout_array(self, dout, xn, self.input_shape)
        dx, self.dgamma, self.dbeta = self.backend.batchnorm_backward(
            dout.reshape(xn.shape), xn, self.inv_std, self.gamma, self.train_flg)
        return dx.reshape(self.input_shape)

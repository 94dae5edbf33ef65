"""Fully connected networks built from the textbook layers.

``params`` holds the arrays the layers use, and every update is in place, so
an optimizer's ``update(net.params, grads)`` changes the net directly.
Weights are drawn from a host NumPy generator seeded by ``seed``: the same
seed gives the same starting net on every backend and dtype.
"""

from __future__ import annotations

import contextlib
import math

import numpy

from fastbp.backends import get_backend
from fastbp.checks import check_choice as _check_choice
from fastbp.checks import check_number, float_dtype
from fastbp.gradcheck import numerical_gradient
from fastbp.layers import Affine, BatchNorm, Dropout, ReLU, Sigmoid, SoftmaxWithLoss
from fastbp.optim import SGD

_ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid}
_INIT_SCALES = {"relu": 2.0, "he": 2.0, "sigmoid": 1.0, "xavier": 1.0}
_DTYPES = ("float64", "float32")
#: layers whose forward depends on train_flg
_MODE_LAYERS = (Dropout, BatchNorm)


class NonFiniteLossError(FloatingPointError):
    """A training step met a NaN or inf loss and applied no update; ``loss`` holds it."""

    def __init__(self, where, loss):
        self.loss = float(loss)
        super().__init__(
            f"{where}: the loss is {self.loss}, not a finite number, so no update was applied "
            "(parameters, BatchNorm statistics and optimizer state are as they were); the usual "
            "causes are a NaN or inf in the batch, or a learning rate so large that the weights "
            "overflow (lower it)")


class MultiLayerNet:
    """Affine -> [BatchNorm] -> activation -> [Dropout] -> ... -> Affine -> SoftmaxWithLoss.

    ``weight_init_std`` is a number, "he"/"relu" (sqrt(2/n_in)) or
    "xavier"/"sigmoid" (sqrt(1/n_in)).  ``weight_decay_lambda`` adds
    ``lambda/2 * sum(||W||^2)`` to the loss and ``lambda * W`` to each dW.
    ``use_batchnorm`` adds a BatchNorm after every hidden Affine (parameters
    ``gamma{i}``, ``beta{i}``; running statistics in ``buffers`` as
    ``running_mean{i}``, ``running_var{i}``, updated as ``r = batchnorm_momentum
    * r + (1 - batchnorm_momentum) * batch`` and normalising with
    ``batchnorm_eps``; see :class:`~fastbp.layers.BatchNorm` for how they
    start and which variance they keep); ``use_dropout`` adds an inverted
    Dropout after every hidden activation, its masks seeded from ``seed``.
    Both act by mode: ``train_flg=True`` (``loss``, ``gradient``,
    ``train_step``) uses batch statistics, updates the running ones and drops
    units; ``train_flg=False`` (``predict``, ``accuracy``) is deterministic.
    """

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0.0, use_dropout=False,
                 dropout_ratio=0.5, use_batchnorm=False, seed=None, backend=None,
                 dtype="float64", batchnorm_momentum=0.9, batchnorm_eps=1e-6):
        name = type(self).__name__
        _check_choice(name, "activation", activation, _ACTIVATIONS)
        sizes = [input_size, *hidden_size_list, output_size]
        if not all(isinstance(s, (int, numpy.integer)) and s > 0 for s in sizes):
            raise ValueError(f"{name}: layer sizes must be positive integers, received {sizes}")
        self.weight_decay_lambda = check_number(name, "weight_decay_lambda", weight_decay_lambda,
                                                ">= 0", lambda v: v >= 0)
        self.dropout_ratio = check_number(name, "dropout_ratio", dropout_ratio, "in [0, 1)",
                                          lambda r: 0 <= r < 1)
        self.batchnorm_momentum = check_number(name, "batchnorm_momentum", batchnorm_momentum,
                                               "in [0, 1]", lambda m: 0 <= m <= 1)
        self.batchnorm_eps = check_number(name, "batchnorm_eps", batchnorm_eps, "> 0",
                                          lambda e: e > 0)
        self.use_dropout, self.use_batchnorm = bool(use_dropout), bool(use_batchnorm)
        self.backend = get_backend(backend)
        self.dtype = float_dtype(name, dtype)
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.hidden_size_list = [int(s) for s in hidden_size_list]
        self.activation = activation

        host_rng = numpy.random.default_rng(seed)
        self.params = {}
        #: non-trainable state saved with checkpoints (BatchNorm running statistics)
        self.buffers = {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            scale = self._init_scale(weight_init_std, n_in)
            W = scale * host_rng.standard_normal((n_in, n_out))
            self.params[f"W{i}"] = self.backend.asarray(W, dtype=self.dtype)
            self.params[f"b{i}"] = self._filled(n_out, 0)
            if self.use_batchnorm and i < len(sizes) - 1:
                self.params[f"gamma{i}"] = self._filled(n_out, 1)
                self.params[f"beta{i}"] = self._filled(n_out, 0)
                self.buffers[f"running_mean{i}"] = self._filled(n_out, 0)
                self.buffers[f"running_var{i}"] = self._filled(n_out, 1)
        # drawn after the weights, so the same seed gives the same weights with or without dropout
        dropout_seeds = host_rng.integers(2**63, size=len(self.hidden_size_list))
        self._build_layers([int(s) for s in dropout_seeds])

    def _filled(self, n, value):
        """A length-``n`` array of ``value`` on the net's backend and dtype."""
        return self.backend.asarray(numpy.full(n, value), dtype=self.dtype)

    def config(self) -> dict:
        """The architecture: what a checkpoint must match to be loaded into this net."""
        return {"input_size": self.input_size, "hidden_size_list": list(self.hidden_size_list),
                "output_size": self.output_size, "activation": self.activation,
                "use_dropout": self.use_dropout, "dropout_ratio": self.dropout_ratio,
                "use_batchnorm": self.use_batchnorm, "batchnorm_momentum": self.batchnorm_momentum,
                "batchnorm_eps": self.batchnorm_eps, "weight_decay_lambda": self.weight_decay_lambda, "dtype": self.dtype.name}

    @staticmethod
    def _init_scale(weight_init_std, n_in):
        if isinstance(weight_init_std, str):
            _check_choice("weight_init_std", "a named scale", weight_init_std.lower(), _INIT_SCALES)
            return math.sqrt(_INIT_SCALES[weight_init_std.lower()] / n_in)
        return float(weight_init_std)

    @property
    def n_layers(self):
        """Number of Affine layers."""
        return len(self.hidden_size_list) + 1

    def _build_layers(self, dropout_seeds):
        be, p = self.backend, self.params
        self.layers = {}
        for i in range(1, self.n_layers + 1):
            self.layers[f"Affine{i}"] = Affine(p[f"W{i}"], p[f"b{i}"], be, need_dx=i > 1)
            if i == self.n_layers:
                break
            if self.use_batchnorm:
                self.layers[f"BatchNorm{i}"] = BatchNorm(
                    p[f"gamma{i}"], p[f"beta{i}"], momentum=self.batchnorm_momentum,
                    running_mean=self.buffers[f"running_mean{i}"],
                    running_var=self.buffers[f"running_var{i}"], backend=be, eps=self.batchnorm_eps)
            self.layers[f"Activation{i}"] = _ACTIVATIONS[self.activation](be)
            if self.use_dropout:
                self.layers[f"Dropout{i}"] = Dropout(self.dropout_ratio, be, dropout_seeds[i - 1])
        self.last_layer = SoftmaxWithLoss(be)
        # the arrays of params, by layer, for the fused step (updated in place, like the layers')
        self._weights = [p[f"W{i}"] for i in range(1, self.n_layers + 1)]
        self._biases = [p[f"b{i}"] for i in range(1, self.n_layers + 1)]

    # ------------------------------------------------------------- validation
    def _prepare(self, x, t=None, where="forward", check_labels=True):
        """Check and convert inputs before anything runs; return ``(x, t)``."""
        where = f"{type(self).__name__}.{where}"
        be = self.backend
        x = be.ensure_array(x, where)
        features = x.shape[1] if x.ndim == 2 else math.prod(x.shape[1:])
        if x.ndim < 2 or x.shape[0] == 0 or features != self.input_size:
            raise ValueError(f"{where}: expected x of shape (N, {self.input_size}) with N >= 1, "
                             f"received shape {tuple(x.shape)}")
        if x.ndim != 2:
            x = x.reshape(x.shape[0], self.input_size)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        if t is None:
            return x, None
        t = be.ensure_array(t, where)
        n, c = x.shape[0], self.output_size
        if t.ndim == 1:
            if t.dtype.kind not in "iu":
                raise ValueError(f"{where}: class-index labels must be integers, "
                                 f"received dtype {t.dtype}")
            if t.shape[0] != n:
                raise ValueError(f"{where}: x has {n} rows but t has {t.shape[0]} labels")
            low, high = be.label_range(t) if check_labels else (0, 0)
            if low < 0 or high >= c:
                raise ValueError(f"{where}: labels must lie in [0, {c}), received values in "
                                 f"[{low}, {high}]")
        elif t.shape == (n, c):
            t = t.astype(self.dtype, copy=False)
        else:
            raise ValueError(f"{where}: expected t of shape ({n},) class indices or ({n}, {c}) "
                             f"one-hot, received shape {tuple(t.shape)}")
        return x, t

    # ---------------------------------------------------------------- forward
    def _predict(self, x, train_flg=False):
        for layer in self.layers.values():
            x = layer.forward(x, train_flg) if isinstance(layer, _MODE_LAYERS) else layer.forward(x)
        return x

    def _weight_decay(self):
        if not self.weight_decay_lambda:
            return 0
        total = sum((W ** 2).sum() for W in self._weights)
        return 0.5 * self.weight_decay_lambda * total

    def _loss(self, x, t, train_flg=True):
        return self.last_layer.forward(self._predict(x, train_flg), t) + self._weight_decay()

    def predict(self, x, train_flg=False):
        """Scores (before softmax) for a batch."""
        x, _ = self._prepare(x, where="predict")
        return self._predict(x, train_flg)

    def loss(self, x, t, train_flg=True):
        """Batch-mean cross-entropy plus the weight-decay term, as a 0-d array.

        ``train_flg=True`` is the training objective that ``gradient``
        differentiates (it draws dropout masks and updates BatchNorm running
        statistics); pass False for a deterministic evaluation.
        """
        x, t = self._prepare(x, t, where="loss")
        return self._loss(x, t, train_flg)

    def accuracy(self, x, t):
        """Fraction of rows whose highest score is the true class, as a float."""
        x, t = self._prepare(x, t, where="accuracy")
        y = self._predict(x).argmax(axis=1)
        if t.ndim != 1:
            t = t.argmax(axis=1)
        return float((y == t).mean())

    # --------------------------------------------------------------- backward
    def _loss_and_gradient(self, x, t):
        loss = self._loss(x, t)
        return loss, self._backward()

    def _backward(self):
        """Gradients of the loss of the last training forward pass, keyed like ``params``."""
        dout = self.last_layer.backward(1)
        for layer in reversed(self.layers.values()):
            dout = layer.backward(dout)
        grads = {}
        lam = self.weight_decay_lambda
        for i in range(1, self.n_layers + 1):
            affine = self.layers[f"Affine{i}"]
            grads[f"W{i}"] = affine.dW + lam * affine.W if lam else affine.dW
            grads[f"b{i}"] = affine.db
            if f"BatchNorm{i}" in self.layers:
                batchnorm = self.layers[f"BatchNorm{i}"]
                grads[f"gamma{i}"], grads[f"beta{i}"] = batchnorm.dgamma, batchnorm.dbeta
        return grads

    def gradient(self, x, t):
        """Backprop gradients, a dict with the keys of ``params``."""
        x, t = self._prepare(x, t, where="gradient")
        return self._loss_and_gradient(x, t)[1]

    def numerical_gradient(self, x, t, h=1e-4):
        """Central-difference gradients (slow: two forward passes per parameter).

        Dropout layers keep the masks of the last training forward pass (so
        the result compares with the ``gradient`` just before), and BatchNorm
        running statistics are restored afterwards.
        """
        x, t = self._prepare(x, t, where="numerical_gradient")
        with self.repeatable_training_passes():
            return {key: numerical_gradient(lambda _: self._loss(x, t), param, h)
                    for key, param in self.params.items()}

    @contextlib.contextmanager
    def repeatable_training_passes(self):
        """Fixed dropout masks inside; BatchNorm running statistics as before, after."""
        dropouts = [layer for layer in self.layers.values() if isinstance(layer, Dropout)]
        fixed = [layer.fixed_mask for layer in dropouts]
        saved = {key: buffer.copy() for key, buffer in self.buffers.items()}
        for layer in dropouts:
            layer.fixed_mask = True
        try:
            yield
        finally:
            for layer, was_fixed in zip(dropouts, fixed):
                layer.fixed_mask = was_fixed
            for key, buffer in self.buffers.items():
                buffer[...] = saved[key]

    def _fused_step_applies(self, optimizer):
        """Plain SGD on a plain net: the backend may run the whole step as one fused call."""
        return (type(optimizer) is SGD and optimizer.clip_norm is None
                and not (self.weight_decay_lambda or self.use_dropout or self.use_batchnorm))

    def train_step(self, x, t, optimizer, check_labels=True, check_finite=True):
        """Forward, backward and an in-place update; returns the loss (0-d array).

        A NaN or inf loss raises :class:`NonFiniteLossError` (a
        ``FloatingPointError``) before anything is updated: the parameters,
        the BatchNorm statistics and the optimizer state stay as they were.
        ``check_finite=False`` skips that test, and so applies whatever the
        loss gives; on a GPU the test waits for the device, so ``Trainer``
        opts out there and checks each epoch's losses at once.
        ``check_labels=False`` skips the label range check, which on a GPU also
        waits; use it only for labels already checked (``Trainer`` checks a
        whole data set once).
        """
        x, t = self._prepare(x, t, where="train_step", check_labels=check_labels)
        if self._fused_step_applies(optimizer):
            loss = self.backend.mlp_sgd_step(x, t, self._weights, self._biases, self.activation,
                                             optimizer.lr, check_finite)
            if check_finite and not math.isfinite(loss):  # the backend updated nothing
                raise NonFiniteLossError(f"{type(self).__name__}.train_step", loss)
            return loss
        saved = {k: b.copy() for k, b in self.buffers.items()} if check_finite else None
        loss = self._loss(x, t)
        if check_finite and not math.isfinite(loss):
            for key, buffer in self.buffers.items():
                buffer[...] = saved[key]
            raise NonFiniteLossError(f"{type(self).__name__}.train_step", loss)
        optimizer.update(self.params, self._backward(), backend=self.backend)
        return loss


class TwoLayerNet(MultiLayerNet):
    """The textbook net: Affine -> ReLU -> Affine -> SoftmaxWithLoss."""

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01,
                 seed=None, backend=None, dtype="float64"):
        super().__init__(input_size, [hidden_size], output_size, activation="relu",
                         weight_init_std=weight_init_std, seed=seed, backend=backend,
                         dtype=dtype)

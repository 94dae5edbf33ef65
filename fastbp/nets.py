"""Fully connected networks built from the textbook layers, and the one training step.

``params`` owns the arrays the layers use (views of one flat buffer, see
:mod:`fastbp.flat`), and every update is in place, so an optimizer's
``update(net.params, grads)`` changes the net directly.  Weights are drawn
from a host NumPy generator seeded by ``seed``: the same seed gives the same
starting net on every backend and dtype.

``train_step`` is written once, for every configuration, from the backend's
blocks (dense forward, softmax + cross-entropy + gradient, activation
backward with the bias gradient, BatchNorm, accumulating products); the
optimizer decides how each weight gradient is consumed.
"""

from __future__ import annotations

import contextlib
import math
import operator

import numpy

from fastbp.backends import get_backend
from fastbp.checks import check_choice, check_number, check_real, check_seed, check_targets, float_dtype
from fastbp.flat import FlatArrays
from fastbp.gradcheck import numerical_gradient
from fastbp.layers import Affine, BatchNorm, Dropout, ReLU, Sigmoid, SoftmaxWithLoss
from fastbp.optim import Optimizer

_ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid}
_INIT_SCALES = {"relu": 2.0, "he": 2.0, "sigmoid": 1.0, "xavier": 1.0}
#: layers whose forward depends on train_flg
_MODE_LAYERS = (Dropout, BatchNorm)
_NO_TARGETS = object()  # _prepare's t for predict, which takes none


class NonFiniteLossError(FloatingPointError):
    """A training step met a NaN or inf loss and applied no update; ``loss`` holds it."""

    def __init__(self, where, loss):
        self.loss = float(loss)
        super().__init__(
            f"{where}: the loss is {self.loss}, not a finite number, so no update was applied "
            "(parameters, BatchNorm statistics and optimizer state are as they were); the usual "
            "causes are a NaN or inf in the batch, or a learning rate so large that the weights "
            "overflow (lower it)")


class NonFiniteInputError(FloatingPointError):
    """A training step was given an ``x`` holding NaN or inf and applied no update.

    Tested before the step, not left to the loss: a saturating activation
    (sigmoid, or ReLU of -inf) can turn an inf into a finite loss whose
    gradient is not finite.
    """

    def __init__(self, where):
        super().__init__(f"{where}: x holds NaN or inf, so no update was applied (parameters, "
                         "BatchNorm statistics and optimizer state are as they were)")


def _shared_mapping(name):
    """``net.<name>`` (params, buffers, grads): read-only, since the layers, the step and the
    checkpoints all hold its arrays; a replaced mapping would be seen by some of them only."""

    def refuse(net, value):
        raise AttributeError(f"{type(net).__name__}.{name} cannot be replaced: the layers, the "
                             f"training step and the checkpoints share its arrays; assign into "
                             f"it (net.{name}[key] = array) or use fastbp.train.load_params")

    return property(operator.attrgetter(f"_{name}"), refuse)


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
    Dropout after every hidden activation, its masks seeded from ``seed``,
    dropping a ``dropout_ratio`` of the units (``dropout_ration``, the book's
    spelling, is taken too).
    Both act by mode: ``train_flg=True`` (``gradient``, ``train_step``, and
    ``predict`` or ``loss`` when asked) uses batch statistics, updates the
    running ones and drops units; ``train_flg=False`` (the default of
    ``predict`` and ``loss``, and always ``accuracy``) is deterministic.

    ``params``, ``buffers`` and ``grads`` (the gradients of the last
    ``gradient`` or materialising ``train_step``) are :class:`FlatArrays`:
    assigning ``net.params["W1"] = array`` copies into the net's own array.
    ``gradient_hook``, when set, is called with ``grads`` between the
    gradient and the update of every ``train_step`` (a data-parallel
    allreduce goes there); the gradients are then always materialised.
    """

    params = _shared_mapping("params")
    #: non-trainable state saved with checkpoints (BatchNorm running statistics)
    buffers = _shared_mapping("buffers")
    grads = _shared_mapping("grads")

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0.0, use_dropout=False,
                 dropout_ratio=0.5, use_batchnorm=False, seed=None, backend=None,
                 dtype="float64", batchnorm_momentum=0.9, batchnorm_eps=1e-6,
                 dropout_ration=None):
        name = type(self).__name__
        if dropout_ration is not None:  # the book's spelling, so its code runs unchanged
            if dropout_ratio != 0.5:
                raise ValueError(f"{name}: give dropout_ratio or the book's dropout_ration, not "
                                 f"both; received {dropout_ratio!r} and {dropout_ration!r}")
            dropout_ratio = dropout_ration
        check_choice(name, "activation", activation, _ACTIVATIONS)
        if isinstance(hidden_size_list, (int, numpy.integer, str)):
            raise ValueError(f"{name}: hidden_size_list must be a list of layer widths, received "
                             f"{hidden_size_list!r}")
        hidden_size_list = list(hidden_size_list)
        sizes = [input_size, *hidden_size_list, output_size]
        if not all(isinstance(s, (int, numpy.integer)) and s > 0 for s in sizes):
            raise ValueError(f"{name}: layer sizes must be positive integers, received {sizes}")
        self.weight_decay_lambda = check_number(name, "weight_decay_lambda", weight_decay_lambda,
                                                ">= 0", lambda v: v >= 0)
        self.dropout_ratio = check_number(name, "dropout_ratio", dropout_ratio, "in [0, 1)",
                                          lambda r: 0 <= r < 1)
        self._batchnorm_defaults = {}  # the settings before the layers exist, and without them
        self.batchnorm_momentum, self.batchnorm_eps = batchnorm_momentum, batchnorm_eps
        self.use_dropout, self.use_batchnorm = bool(use_dropout), bool(use_batchnorm)
        self.backend = get_backend(backend)
        self.dtype = float_dtype(name, dtype)
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.hidden_size_list = [int(s) for s in hidden_size_list]
        self.activation = activation

        host_rng = numpy.random.default_rng(check_seed(name, seed))
        params, buffers = {}, {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            scale = self._init_scale(weight_init_std, n_in)
            params[f"W{i}"] = scale * host_rng.standard_normal((n_in, n_out))
            params[f"b{i}"] = numpy.zeros(n_out)
            if self.use_batchnorm and i < len(sizes) - 1:
                params[f"gamma{i}"], params[f"beta{i}"] = numpy.ones(n_out), numpy.zeros(n_out)
                buffers[f"running_mean{i}"] = numpy.zeros(n_out)
                buffers[f"running_var{i}"] = numpy.ones(n_out)
        self._params = self._flat(f"{name}.params", params)
        self._buffers = self._flat(f"{name}.buffers", buffers)
        self._grads = self._params.zeros_like(f"{name}.grads")
        self.gradient_hook = None
        # drawn after the weights, so the same seed gives the same weights with or without dropout
        dropout_seeds = host_rng.integers(2**63, size=len(self.hidden_size_list))
        self._build_layers([int(s) for s in dropout_seeds])

    def _flat(self, owner, values):
        """``values`` (host arrays by name) as FlatArrays of the net's backend and dtype."""
        arrays = FlatArrays(owner, self.backend, self.dtype, {k: v.shape for k, v in values.items()})
        for key, value in values.items():
            arrays[key] = value
        return arrays

    def architecture(self) -> dict:
        """The part of ``config`` a checkpoint must match to be loaded into this net: what
        shapes the arrays and the function they compute (training settings may differ)."""
        config = self.config()
        keys = ["input_size", "hidden_size_list", "output_size", "activation", "use_batchnorm"]
        if self.use_batchnorm:  # eps is unused without BatchNorm
            keys.append("batchnorm_eps")
        return {key: config[key] for key in keys}

    def config(self) -> dict:
        """How the net was made (saved with its checkpoints; see ``architecture``)."""
        return {"input_size": self.input_size, "hidden_size_list": list(self.hidden_size_list),
                "output_size": self.output_size, "activation": self.activation,
                "use_dropout": self.use_dropout, "dropout_ratio": self.dropout_ratio,
                "use_batchnorm": self.use_batchnorm, "batchnorm_momentum": self.batchnorm_momentum,
                "batchnorm_eps": self.batchnorm_eps, "weight_decay_lambda": self.weight_decay_lambda,
                "dtype": self.dtype.name}

    @staticmethod
    def _init_scale(weight_init_std, n_in):
        if isinstance(weight_init_std, str):
            check_choice("weight_init_std", "a named scale", weight_init_std.lower(), _INIT_SCALES)
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
        self._hidden = [(self.layers.get(f"BatchNorm{i}"), self.layers.get(f"Dropout{i}"))
                        for i in range(1, self.n_layers)]
        self._masks = None  # the Dropout layers' masks when a backend's one-call step draws them
        self._sizes = numpy.array([self.input_size, *self.hidden_size_list, self.output_size],
                                  dtype=numpy.int64)
        self._link()

    def _link(self):
        """Point the layers and what the step reads at the views of ``params`` and ``buffers``."""
        p, buffers = self.params, self.buffers
        for i in range(1, self.n_layers + 1):
            affine = self.layers[f"Affine{i}"]
            affine.W, affine.b = p[f"W{i}"], p[f"b{i}"]
            batchnorm = self.layers.get(f"BatchNorm{i}")
            if batchnorm is not None:
                batchnorm.gamma, batchnorm.beta = p[f"gamma{i}"], p[f"beta{i}"]
                batchnorm.running_mean = buffers[f"running_mean{i}"]
                batchnorm.running_var = buffers[f"running_var{i}"]
        self._W = [p[f"W{i}"] for i in range(1, self.n_layers + 1)]
        self._b = [p[f"b{i}"] for i in range(1, self.n_layers + 1)]

    @property
    def batchnorm_momentum(self):
        """The BatchNorm layers' ``momentum`` (setting it sets every layer's)."""
        return self._batchnorm_setting("momentum")

    @batchnorm_momentum.setter
    def batchnorm_momentum(self, value):
        self._set_batchnorm("momentum", value, "in [0, 1]", lambda m: 0 <= m <= 1)

    @property
    def batchnorm_eps(self):
        """The BatchNorm layers' ``eps`` (setting it sets every layer's)."""
        return self._batchnorm_setting("eps")

    @batchnorm_eps.setter
    def batchnorm_eps(self, value):
        self._set_batchnorm("eps", value, "> 0", lambda e: e > 0)

    def _batchnorm_setting(self, name):
        """The layers' common value of ``name``: a layer's attribute is the textbook's to set,
        and the net reads it from there (a ValueError when the layers were given different
        ones, which one number cannot describe)."""
        layers = [batchnorm for batchnorm, _ in getattr(self, "_hidden", ()) if batchnorm]
        values = {getattr(layer, name) for layer in layers}
        if len(values) > 1:
            raise ValueError(f"{type(self).__name__}.batchnorm_{name}: the BatchNorm layers hold "
                             f"different values {sorted(values)}; set net.batchnorm_{name} to "
                             "give them one")
        return values.pop() if values else self._batchnorm_defaults[name]

    def _set_batchnorm(self, name, value, expected, ok):
        value = check_number(type(self).__name__, f"batchnorm_{name}", value, expected, ok)
        self._batchnorm_defaults[name] = value
        for batchnorm, _ in getattr(self, "_hidden", ()):
            if batchnorm is not None:
                setattr(batchnorm, name, value)

    def _batchnorm_step(self):
        """What a backend's one-call step needs of the BatchNorm layers: ``(running
        statistics, momentum, eps)``, read now, as the layers' own forward reads them; False
        when the layers differ (the layered step then runs)."""
        try:
            return (self.buffers.flat, self.batchnorm_momentum, self.batchnorm_eps)
        except ValueError:
            return False

    def _dropout_step(self, batch):
        """What a backend's one-call step needs of the Dropout layers: ``(generators, ratio,
        scale, masks)``, ``masks`` one flat array of the net's for this batch size (each layer's
        ``(batch, width)`` in turn), which the step fills and the layers then keep views of;
        False when a layer's mask is fixed or the layers' ratios differ (the layered step then
        runs, which honours both)."""
        layers = [dropout for _, dropout in self._hidden]
        ratios = {layer.dropout_ratio for layer in layers}
        if len(ratios) > 1 or any(layer.fixed_mask for layer in layers):
            return False
        if self._masks is None or self._masks[1][0].shape[0] != batch:
            flat = self.backend.xp.empty(batch * sum(self.hidden_size_list), self.dtype)
            bounds = numpy.cumsum([0, *self.hidden_size_list]) * batch
            self._masks = flat, [flat[a:b].reshape(batch, -1) for a, b in zip(bounds, bounds[1:])]
        return tuple(layer.rng for layer in layers), ratios.pop(), layers[0].scale, self._masks[0]

    def _keep_masks(self, dropout):
        """After a one-call step drew ``dropout``'s masks: the layers hold them, as after their
        own training forward."""
        if dropout:
            for (_, layer), mask in zip(self._hidden, self._masks[1]):
                layer.mask, layer.train_flg = mask, True

    def __setstate__(self, state):
        """A copy (``copy.deepcopy``, pickle) holds its layers' arrays as copies of their own;
        link them to its flat buffers again, or its updates would never reach the layers (the
        dropout masks' views are dropped: the next one-call step makes new ones)."""
        self.__dict__.update(state)
        self._masks = None
        self._link()

    # ------------------------------------------------------------- validation
    def _prepare(self, x, t=_NO_TARGETS, where="forward", check_labels=True):
        """Check and convert inputs before anything runs; return ``(x, t)`` (``t`` None when
        not given, for ``predict``)."""
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
            check_real(where, "x", x)
            x = x.astype(self.dtype)
        if t is _NO_TARGETS:
            return x, None
        if t is None:
            raise ValueError(f"{where}: expected targets t (class indices or one-hot rows), "
                             "received None")
        t = check_targets(where, be.ensure_array(t, where), x.shape[0], self.output_size, be,
                          self.dtype, check_labels)
        return x, t

    # ---------------------------------------------------------------- forward
    def _predict(self, x, train_flg=False):
        for layer in self.layers.values():
            x = layer.forward(x, train_flg) if isinstance(layer, _MODE_LAYERS) else layer.forward(x)
        return x

    def _weight_decay(self):
        if not self.weight_decay_lambda:
            return 0
        total = sum(self.backend.xp.vdot(W, W) for W in self._W)  # no temporary array
        return 0.5 * self.weight_decay_lambda * total

    def _loss(self, x, t, train_flg=True):
        return (self.last_layer.forward(self._predict(x, train_flg), t, check_labels=False)
                + self._weight_decay())

    def predict(self, x, train_flg=False):
        """Scores (before softmax) for a batch."""
        x, _ = self._prepare(x, where="predict")
        return self._predict(x, train_flg)

    def loss(self, x, t, train_flg=False):
        """Batch-mean cross-entropy plus the weight-decay term, as a 0-d array.

        By default an evaluation, as the textbook's ``MultiLayerNetExtend``:
        no dropout, BatchNorm's running statistics, nothing changed.
        ``train_flg=True`` is the training objective that ``gradient``
        differentiates (it draws dropout masks and updates the running
        statistics).
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
    def gradient(self, x, t):
        """Backprop gradients, a dict with the keys of ``params`` (copies of ``grads``)."""
        x, t = self._prepare(x, t, where="gradient")
        self._step(x, t, None, check_finite=False)
        return {key: grad.copy() for key, grad in self.grads.items()}

    def numerical_gradient(self, x, t, h=1e-4, blocks=None):
        """Central-difference gradients (slow: two forward passes per parameter).

        Dropout layers keep the masks of the last training forward pass (so
        the result compares with the ``gradient`` just before), and BatchNorm
        running statistics are restored afterwards.  ``blocks``, a dict of
        ``{key: slice}``, differentiates by those elements of each flattened
        parameter only (a sample of a big net), returned as 1-D arrays.
        """
        x, t = self._prepare(x, t, where="numerical_gradient")
        arrays = self.params if blocks is None else self._blocks(blocks)
        with self.repeatable_training_passes():
            return {key: numerical_gradient(lambda _: self._loss(x, t), param, h)
                    for key, param in arrays.items()}

    def _blocks(self, blocks):
        """``{key: view}`` of the slices ``blocks`` names (views, so perturbing them reaches the
        layers; an index array would make a copy)."""
        for key, block in blocks.items():
            if key not in self.params or not isinstance(block, slice):
                raise ValueError(f"{type(self).__name__}.numerical_gradient: blocks must map keys "
                                 f"of params {list(self.params)} to slices, received "
                                 f"{key!r}: {block!r}")
        return {key: self.params[key].reshape(-1)[block] for key, block in blocks.items()}

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

    def train_step(self, x, t, optimizer, check_labels=True, check_finite=True):
        """Forward, backward and an in-place update; returns the loss (0-d array).

        Equals ``gradient`` followed by ``optimizer.update`` to rounding, for
        every optimizer and option.  A NaN or inf in ``x`` raises
        :class:`NonFiniteInputError`, and a NaN or inf loss
        :class:`NonFiniteLossError` (both ``FloatingPointError``), before
        anything is updated: the parameters, the BatchNorm statistics and the
        optimizer state stay as they were.  ``check_finite=False`` skips both
        tests, and so applies whatever the batch gives; on a GPU they wait for
        the device, so ``Trainer`` opts out there and checks each epoch's
        losses at once.  ``check_labels=False`` skips the label range check on
        a GPU, where it also waits; use it only for labels already checked
        (``Trainer`` checks a whole data set once).  The CPU backends check
        labels always: it costs well under a microsecond, and a label out of
        range would index outside the arrays.
        """
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}.train_step: optimizer must be an optimizer "
                            f"instance such as fastbp.optim.SGD(lr=0.1), received {optimizer!r}")
        params = self._params
        optimizer.check_fits(params, self)
        x, t = self._prepare(x, t, where="train_step", check_labels=check_labels)
        batchnorm = dropout = None
        if self.use_batchnorm:
            if x.shape[0] < 2:
                raise ValueError(f"{type(self).__name__}.train_step: a net with BatchNorm trains "
                                 "on batches of at least 2 samples (one sample normalises to 0), "
                                 f"received shape {tuple(x.shape)}")
            batchnorm = self._batchnorm_step()
        if self.use_dropout:
            dropout = self._dropout_step(x.shape[0])
        whole = self.gradient_hook is None and batchnorm is not False and dropout is not False
        rule = optimizer.flat_rule(params, self.backend) if whole else None
        if rule is not None:
            loss = self.backend.whole_step(x, t, self._W, self._b, self._sizes, params.flat,
                                           self.grads.flat, self.activation,
                                           self.weight_decay_lambda, rule, check_finite,
                                           batchnorm, dropout)
            if loss is not None:  # the backend ran the whole step as one call, x checked
                if check_finite and not math.isfinite(loss):  # and updated nothing
                    where = f"{type(self).__name__}.train_step"
                    if not self.backend.all_finite(x):  # refused before drawing any mask
                        raise NonFiniteInputError(where)
                    self._keep_masks(dropout)
                    raise NonFiniteLossError(where, loss)
                self._keep_masks(dropout)
                optimizer.count_flat(params)
                return loss
        if check_finite and not self.backend.all_finite(x):
            raise NonFiniteInputError(f"{type(self).__name__}.train_step")
        return self._step(x, t, optimizer, check_finite)

    def _step(self, x, t, optimizer, check_finite):
        """The training step, for every configuration; returns the loss.

        The weight gradients go where ``optimizer`` says: folded into the
        products that make them (``fold_weight``) when its rule allows and no
        ``gradient_hook`` is set, else into ``grads`` for ``gradient_hook`` and
        one ``update_flat`` pass; without an optimizer only into ``grads``.
        """
        be, act, lam = self.backend, self.activation, self.weight_decay_lambda
        fold = optimizer is not None and optimizer.folds_products and self.gradient_hook is None
        saved = self.buffers.flat.copy() if check_finite and len(self.buffers) else None
        # forward: the input of every Affine, and the output of every hidden activation
        inputs, outputs = [x], []
        for (batchnorm, dropout), W, b in zip(self._hidden, self._W, self._b):
            if batchnorm is None:
                a = be.dense_forward(inputs[-1], W, b, act)
            else:
                a = be.activate(batchnorm.forward(be.dense_forward(inputs[-1], W, b, "identity"),
                                                  True), act)
            outputs.append(a)
            inputs.append(a if dropout is None else dropout.forward(a, True))
        loss, d = be.softmax_cross_entropy_grad(be.gemm(inputs[-1], self._W[-1]), self._b[-1], t)
        if lam:
            loss = loss + self._weight_decay()
        if check_finite and not math.isfinite(loss):
            if saved is not None:
                self.buffers.flat[...] = saved
            raise NonFiniteLossError(f"{type(self).__name__}.train_step", loss)

        # backward: d is the gradient at the pre-activation of layer i + 1, db its bias gradient
        consume = self._consumer(optimizer if fold else None)
        db = be.activation_backward_bias(d, None, "identity")[1]
        for i in reversed(range(self.n_layers)):
            W = self._W[i]
            d_below = be.gemm(d, W, trans_b=True) if i else None  # uses W before its update
            if fold:
                optimizer.fold_weight(be, f"W{i + 1}", W, inputs[i], d, lam)
            else:
                self._weight_gradient(self.grads[f"W{i + 1}"], W, inputs[i], d, lam)
            consume(f"b{i + 1}", self._b[i], db)
            if not i:
                break
            batchnorm, dropout = self._hidden[i - 1]
            if dropout is not None:
                d_below = dropout.backward(d_below)
            d, db = be.activation_backward_bias(d_below, outputs[i - 1], act)
            if batchnorm is not None:
                d = batchnorm.backward(d)
                consume(f"gamma{i}", batchnorm.gamma, batchnorm.dgamma)
                consume(f"beta{i}", batchnorm.beta, batchnorm.dbeta)
                db = be.activation_backward_bias(d, None, "identity")[1]
        if optimizer is not None and not fold:
            if self.gradient_hook is not None:
                try:
                    self.gradient_hook(self.grads)  # the one place between gradient and update
                except FloatingPointError:  # e.g. another rank's loss was not finite
                    if saved is not None:
                        self.buffers.flat[...] = saved
                    raise
            optimizer.update_flat(self.params, self.grads, be)
        return loss

    def _consumer(self, optimizer):
        """``consume(key, param, grad)``: the optimizer's rule now, or ``grads[key] = grad``."""
        if optimizer is None:
            return lambda key, param, grad: self.grads.__setitem__(key, grad)
        return lambda key, param, grad: optimizer.update_one(self.backend, key, param, grad)

    def _weight_gradient(self, out, W, a, d, lam):
        """``out = a.T @ d + lam * W``: one product, accumulating onto the decay term."""
        if lam:
            self.backend.xp.multiply(W, lam, out=out)
        self.backend.gemm(a, d, out, trans_a=True, beta=1.0 if lam else 0.0)


class TwoLayerNet(MultiLayerNet):
    """The textbook net: Affine -> ReLU -> Affine -> SoftmaxWithLoss."""

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01,
                 seed=None, backend=None, dtype="float64"):
        super().__init__(input_size, [hidden_size], output_size, activation="relu",
                         weight_init_std=weight_init_std, seed=seed, backend=backend,
                         dtype=dtype)

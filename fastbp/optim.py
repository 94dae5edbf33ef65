"""Optimizers with the textbook contract: ``update(params, grads)`` changes ``params`` in place.

The arithmetic is the backend's fused, in-place update kernel; an optimizer
holds only hyper-parameters and per-parameter state.  The state arrays
(``v``, ``h``, ``m``) are dicts keyed like ``params``, created lazily as
zeros like each parameter (same backend, same dtype), as in the textbook.

``update`` checks every key and shape, and the shape of any state already
held, before it touches anything, so a bad call changes neither the params
nor the optimizer.  Every optimizer takes ``clip_norm``: the grads are then
scaled, as one, to a global L2 norm of at most ``clip_norm`` before the
update (as ``torch.nn.utils.clip_grad_norm_``); the scaled grads are copies,
the caller's arrays are never modified.

Each update rule equals PyTorch's of the same name on the same sequence of
gradients, to rounding.  The defaults of ``lr``, ``momentum``, ``decay_rate``
and the betas are the textbook's ("Deep Learning from Scratch"); they are also
PyTorch's except for SGD, Momentum and Nesterov, where ``torch.optim.SGD``
defaults to ``lr=1e-3`` and no momentum, and the textbook (and fastbp) to
``lr=0.01`` and ``momentum=0.9``.  The defaults of ``eps`` are PyTorch's
(1e-10 for AdaGrad, 1e-8 for RMSprop and Adam), where the textbook adds 1e-7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from fastbp.backends import get_backend
from fastbp.checks import check_number, check_real

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "clip_by_global_norm"]


@dataclass(slots=True)
class _SharedCount:
    """The update count every key of one params buffer shares, and that buffer's flat state."""

    flat: object
    names: tuple
    count: int
    state: list


#: dtype -> (smallest normal ``tiny``, the smallest eps ``sqrt(tiny)``, largest finite)
_NORMAL_RANGE = {}


def _normal_range(dtype):
    if dtype not in _NORMAL_RANGE:
        tiny = float(numpy.finfo(dtype).tiny)
        _NORMAL_RANGE[dtype] = tiny, tiny ** 0.5, float(numpy.finfo(dtype).max)
    return _NORMAL_RANGE[dtype]


def _positive(owner, argument, value):
    return check_number(type(owner).__name__, argument, value, "> 0", lambda v: v > 0)


def _fraction(owner, argument, value):
    return check_number(type(owner).__name__, argument, value, "in [0, 1)", lambda v: 0 <= v < 1)


def clip_by_global_norm(grads, max_norm, backend=None):
    """``grads`` scaled as one so their global L2 norm is at most ``max_norm``.

    The rule of ``torch.nn.utils.clip_grad_norm_``: scale by
    ``max_norm / (norm + 1e-6)`` when that is below 1.  Returns new arrays
    when it scales, and ``grads`` itself when it does not.
    """
    xp = get_backend(backend).xp
    norms = [xp.linalg.norm(g) for g in grads.values()]
    norm = float(xp.linalg.norm(xp.stack(norms))) if norms else 0.0  # one device sync
    scale = _clip_scale(norm, max_norm)
    return {key: g * scale for key, g in grads.items()} if scale < 1 else grads


def _clip_scale(norm, max_norm) -> float:
    """The factor that brings a global gradient norm to at most ``max_norm`` (torch's rule)."""
    return min(1.0, max_norm / (norm + 1e-6))


class Optimizer:
    """Validation, clipping and lazy state; each subclass's ``update_rule`` is its update,
    written once: the backend's fused update it calls, with which hyper-parameters.

    Two ways in, one rule: ``update(params, grads)`` (the textbook contract,
    any dicts) runs ``_rule`` per parameter; a net's ``train_step`` either
    lets the rule consume a weight's gradient inside the product that makes
    it (``fold_weight``, where the rule allows: SGD, Momentum) or hands it
    the net's flat parameter and gradient buffers for one fused pass over
    the whole net (``update_flat``).  In the flat pass the state arrays
    ``self.<name>[key]`` become views of one flat state buffer, so the two
    ways in can be mixed.
    """

    #: names of the per-parameter state dicts, each ``{key: array like params[key]}``
    state_names: tuple = ()
    #: the term that keeps a division finite, in the rules that divide
    eps = None

    def __init__(self, lr, clip_norm=None):
        self.lr = _positive(self, "lr", lr)
        self.clip_norm = None if clip_norm is None else _positive(self, "clip_norm", clip_norm)
        for name in self.state_names:
            setattr(self, name, {})
        self._steps = {}  # key -> its update count, but see _uniform
        self._flat = {}  # state name -> (the params buffer it is laid out for, flat state)
        #: the :class:`_SharedCount` of the last one-pass update, counted in O(1) a step and
        #: written to ``_steps`` when ``step`` is read; any per-key update forgets it
        self._uniform = None
        self._fits = None  # the params last found to fit the state (see check_fits)

    def __getstate__(self):
        """Copies and pickles hold the state and counts per key; the flat state is made again
        on the next one-pass update (a copied view would no longer be part of it)."""
        state = self.__dict__.copy()
        state.update(_steps=dict(self.step), _flat={}, _uniform=None, _fits=None)
        state.update({name: dict(getattr(self, name)) for name in self.state_names})
        return state

    @property
    def step(self) -> dict:
        """``step[key]``: how many updates each parameter has had."""
        held = self._uniform
        if held is not None:
            for key in held.names:
                self._steps[key] = held.count
        return self._steps

    def update(self, params, grads, backend=None):
        """Update ``params`` in place from ``grads`` (dicts with the same keys and shapes).

        ``backend`` defaults to the current backend; a net's ``train_step``
        passes its own.
        """
        self._check(params, grads)
        backend = get_backend(backend)
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm, backend)
        for key in params:
            self.update_one(backend, key, params[key], grads[key])

    def update_one(self, backend, key, param, grad):
        """The rule on one parameter (no checks, no clipping): a step's biases use it."""
        self._rule(backend, param, grad, [self._state(backend, n, key, param)
                                          for n in self.state_names], self._count_one(key))

    def _count_one(self, key) -> int:
        """One more update of ``key`` (the keys may no longer share one count); the new count."""
        steps = self.step
        self._uniform = None
        steps[key] = steps.get(key, 0) + 1
        return steps[key]

    def update_flat(self, params, grads, backend):
        """One fused pass over a whole net: ``params`` and ``grads`` are a net's
        :class:`~fastbp.flat.FlatArrays` of one layout; ``grads`` may be scaled in place.
        """
        if self.clip_norm is not None:
            scale = _clip_scale(float(backend.xp.linalg.norm(grads.flat)), self.clip_norm)  # a sync
            if scale < 1:
                grads.flat *= scale
        rule = self._one_pass(params, backend)
        if rule is None:  # parameters that joined at different times: one at a time
            for key in params:
                self.update_one(backend, key, params[key], grads[key])
            return
        name, hyper, state = rule
        getattr(backend, name)(params.flat, grads.flat, *state, *hyper)
        self.count_flat(params)

    def flat_rule(self, params, backend):
        """``(update, hyper-parameters, flat state)`` of the next one-pass update of ``params``.

        For a backend that runs a whole step as one call: ``update`` names the
        backend's fused update (``"adam_update"``, ...), called as
        ``update(param, grad, *state, *hyper)``.  None when the update cannot be
        one pass (clipping, parameters at different steps).  Call
        ``count_flat(params)`` once it has been applied.
        """
        return None if self.clip_norm is not None else self._one_pass(params, backend)

    def _one_pass(self, params, backend):
        """``flat_rule`` whatever the clipping: None while the keys' step counts differ."""
        held = self._uniform
        if held is None or held.flat is not params.flat:
            steps = {self.step.get(key, 0) for key in params.names}
            if len(steps) > 1:
                return None
            held = self._uniform = _SharedCount(
                params.flat, params.names, steps.pop(),
                [self._flat_state(backend, n, params) for n in self.state_names])
        name, hyper = self.update_rule(held.count + 1)
        return name, hyper, held.state

    def count_flat(self, params):
        """One more update of every parameter of ``params``, after its ``flat_rule`` ran."""
        held = self._uniform
        if held is None or held.flat is not params.flat:
            raise RuntimeError(f"{type(self).__name__}.count_flat: no flat_rule of these params "
                               "to count; call flat_rule first")
        held.count += 1

    @property
    def folds_products(self) -> bool:
        """True when ``fold_weight`` may take a weight's gradient as the product that makes it."""
        return False

    def fold_weight(self, backend, key, W, a, d, decay):
        """Update ``W`` from its gradient ``a.T @ d + decay * W`` without materialising it."""
        raise NotImplementedError(f"{type(self).__name__} does not fold its update into a product")

    def _check(self, params, grads):
        name = f"{type(self).__name__}.update"
        if set(params) != set(grads):
            raise ValueError(f"{name}: params and grads must have the same keys, received "
                             f"params {sorted(params)} and grads {sorted(grads)}")
        for key, param in params.items():
            if getattr(param, "dtype", None) is None or param.dtype.kind != "f":
                raise ValueError(f"{name}: params[{key!r}] must be a floating-point array (it is "
                                 f"updated in place), received "
                                 f"{getattr(param, 'dtype', type(param).__name__)}")
            if not hasattr(grads[key], "dtype"):
                raise ValueError(f"{name}: grads[{key!r}] must be an array of shape "
                                 f"{tuple(param.shape)}, received {type(grads[key]).__name__}")
            check_real(name, f"grads[{key!r}]", grads[key])
            if grads[key].shape != param.shape:
                raise ValueError(f"{name}: grads[{key!r}] must have shape {tuple(param.shape)}, "
                                 f"received {tuple(grads[key].shape)}")
            self._check_state_fits(name, key, param.shape)
            self._check_range(name, param.dtype)

    def check_fits(self, params, net):
        """Refuse ``params`` whose shapes differ from the state held for them, or whose dtype
        cannot hold ``lr`` or ``eps``, before a ``net.train_step`` changes anything; O(1) for
        the params last checked while no state is made."""
        self._check_range(f"{type(net).__name__}.train_step", params.flat.dtype)
        if self._fits is not params:
            for key, param in params.items():
                self._check_state_fits(f"{type(net).__name__}.train_step", key, param.shape)
            self._fits = params

    def _check_range(self, where, dtype):
        """Refuse an ``lr`` beyond ``dtype``'s normal numbers, or an ``eps`` below the square
        root of its smallest normal (checked each step, as a schedule may change them).

        In float32, 1e39 is inf, and the fused passes read 1e-40 as 0 (they treat subnormals
        as zero, :mod:`fastbp.backends.numba_kernels.fpmode`), so 0 / (0 + eps) would be NaN.
        A division by ``sqrt(state) + eps`` magnifies what those passes flush (less than the
        smallest normal, ``tiny``) by up to ``1 / eps``; with ``eps >= sqrt(tiny)`` that stays
        below ``sqrt(tiny)`` (1e-19 in float32), so the backends cannot disagree by whole steps.
        """
        tiny, eps_floor, largest = _normal_range(dtype)
        if tiny <= self.lr <= largest and (self.eps is None or eps_floor <= self.eps <= largest):
            return
        if not tiny <= self.lr <= largest:
            raise ValueError(f"{where}: {type(self).__name__}'s lr {self.lr!r} lies outside "
                             f"{dtype}'s normal numbers [{tiny:.4g}, {largest:.4g}], so it "
                             f"would be {'inf' if self.lr > largest else '0'} in the update; "
                             "nothing was changed")
        if self.eps > largest:
            raise ValueError(f"{where}: {type(self).__name__}'s eps {self.eps!r} lies above "
                             f"{dtype}'s largest number {largest:.4g}, so it would be inf in the "
                             "update; nothing was changed")
        raise ValueError(f"{where}: {type(self).__name__}'s eps {self.eps!r} lies below "
                         f"{eps_floor:.4g}, the square root of {dtype}'s smallest normal number, "
                         "so dividing by it would magnify numbers that underflow to zero into "
                         "whole steps; nothing was changed")

    def _check_state_fits(self, where, key, shape):
        """Refuse a parameter of another shape than the state held for ``key``."""
        for state in self.state_names:
            held = getattr(self, state).get(key)
            if held is not None and held.shape != shape:
                raise ValueError(f"{where}: params[{key!r}] must keep the shape "
                                 f"{tuple(held.shape)} this optimizer's state was made for, "
                                 f"received {tuple(shape)}; use a new optimizer")

    def _state(self, backend, name, key, param):
        """The state array ``self.<name>[key]``, created as zeros like ``param`` on first use."""
        store = getattr(self, name)
        if key not in store:
            store[key] = backend.xp.zeros_like(param)
            self._fits = None
        return store[key]

    def _flat_state(self, backend, name, params):
        """State ``name`` for every key of ``params`` as one flat array; the dict holds its views.

        Made once per net (state already held per key is carried over).
        """
        held = self._flat.get(name)
        if held is not None and held[0] is params.flat:
            return held[1]
        flat = backend.xp.zeros_like(params.flat)
        store = getattr(self, name)
        for key, view in params.views_of(flat).items():
            if key in store:
                view[...] = store[key]
            store[key] = view
        self._flat[name], self._fits = (params.flat, flat), None
        return flat

    def _rule(self, backend, param, grad, state, step):
        """In place: the update of ``param`` from ``grad`` with the state arrays ``state``
        (in ``state_names`` order); ``step`` counts this parameter's updates from 1."""
        name, hyper = self.update_rule(step)
        getattr(backend, name)(param, grad, *state, *hyper)

    def update_rule(self, step):
        """``(name of the backend's fused update, its hyper-parameters)`` for update ``step``."""
        raise NotImplementedError


class SGD(Optimizer):
    """Plain stochastic gradient descent: ``param -= lr * grad``.

    In a net's step the weight update rides on the product that makes its
    gradient: ``W = (1 - lr * lambda) * W - lr * a.T @ d`` is one GEMM.
    """

    def __init__(self, lr=0.01, clip_norm=None):
        super().__init__(lr, clip_norm)

    @property
    def folds_products(self):
        return self.clip_norm is None  # clipping needs the whole gradient first

    def fold_weight(self, backend, key, W, a, d, decay):
        self._count_one(key)
        backend.gemm(a, d, W, trans_a=True, alpha=-self.lr, beta=1 - self.lr * decay)

    def update_rule(self, step):
        return "sgd_update", (self.lr,)


class Momentum(Optimizer):
    """Heavy-ball momentum, the textbook's ``v = momentum * v - lr * grad; param += v``.

    For a constant ``lr`` this is ``torch.optim.SGD(momentum=momentum)``
    (torch's buffer is ``-v / lr``).  In a net's step the velocity update is
    one product into ``v``, then one pass over ``W``.
    """

    state_names = ("v",)

    def __init__(self, lr=0.01, momentum=0.9, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.momentum = _fraction(self, "momentum", momentum)

    @property
    def folds_products(self):
        return self.clip_norm is None

    def fold_weight(self, backend, key, W, a, d, decay):
        self._count_one(key)
        v = self._state(backend, "v", key, W)
        backend.gemm(a, d, v, trans_a=True, alpha=-self.lr, beta=self.momentum)
        backend.apply_velocity(W, v, self.lr * decay)

    def update_rule(self, step):
        return "momentum_update", (self.lr, self.momentum)


class Nesterov(Momentum):
    """Nesterov momentum: ``v = momentum * v - lr * grad; param += momentum * v - lr * grad``.

    For a constant ``lr`` this is ``torch.optim.SGD(momentum=momentum,
    nesterov=True)``, and the update the DLFS book derives: ``param +=
    momentum**2 * v - (1 + momentum) * lr * grad`` with the ``v`` from before
    the step (substitute the new ``v`` to see it).  The book's published class
    updates ``v`` first and so applies the new one, a different step; fastbp
    follows the derivation and torch.  It needs the gradient itself, so a
    net's step materialises it.
    """

    @property
    def folds_products(self):
        return False

    def update_rule(self, step):
        return "nesterov_update", (self.lr, self.momentum)


class AdaGrad(Optimizer):
    """``h += grad**2; param -= lr * grad / (sqrt(h) + eps)``, as ``torch.optim.Adagrad``.

    ``eps`` defaults to torch's 1e-10 (the textbook adds 1e-7).
    """

    state_names = ("h",)

    def __init__(self, lr=0.01, eps=1e-10, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.eps = _positive(self, "eps", eps)

    def update_rule(self, step):
        return "adagrad_update", (self.lr, self.eps)


class RMSprop(Optimizer):
    """``h = decay_rate * h + (1 - decay_rate) * grad**2; param -= lr * grad / (sqrt(h) + eps)``.

    Equals ``torch.optim.RMSprop(alpha=decay_rate)``; ``eps`` defaults to
    torch's 1e-8 (the textbook adds 1e-7).
    """

    state_names = ("h",)

    def __init__(self, lr=0.01, decay_rate=0.99, eps=1e-8, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.decay_rate = _fraction(self, "decay_rate", decay_rate)
        self.eps = _positive(self, "eps", eps)

    def update_rule(self, step):
        return "rmsprop_update", (self.lr, self.decay_rate, self.eps)


class Adam(Optimizer):
    """Adam with bias correction, as ``torch.optim.Adam`` (``eps`` added after the correction).

    ``step[key]`` counts the updates of each parameter, so a parameter that
    joins late still gets the correction for its own first step.
    """

    state_names = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, clip_norm=None):
        super().__init__(lr, clip_norm)
        self.beta1 = _fraction(self, "beta1", beta1)
        self.beta2 = _fraction(self, "beta2", beta2)
        self.eps = _positive(self, "eps", eps)

    def update_rule(self, step):
        return "adam_update", (self.lr, self.beta1, self.beta2, step, self.eps)

    def _check_range(self, where, dtype):
        """Also refuse bias-corrected values at step 1 that the same bounds refuse: an
        ``eps * sqrt(1 - beta2)`` below ``sqrt(tiny)``, and a step size
        ``lr * sqrt(1 - beta2) / (1 - beta1)`` below ``tiny`` (the fused passes read it
        as 0 and would skip the step the reference takes)."""
        super()._check_range(where, dtype)
        tiny, eps_floor, _ = _normal_range(dtype)
        root = (1 - self.beta2) ** 0.5
        if self.eps * root < eps_floor:
            raise ValueError(f"{where}: Adam's eps {self.eps!r} times sqrt(1 - beta2) lies below "
                             f"{eps_floor:.4g}, the square root of {dtype}'s smallest normal "
                             "number, in the first updates; nothing was changed")
        if self.lr * root / (1 - self.beta1) < tiny:
            raise ValueError(f"{where}: Adam's lr {self.lr!r} times sqrt(1 - beta2) / (1 - beta1) "
                             f"lies below {dtype}'s smallest normal number {tiny:.4g}, so the "
                             "first updates would be 0; nothing was changed")

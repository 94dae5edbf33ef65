"""The train-step contenders: one training step of the same net, done by each.

A :class:`Problem` fixes what is trained: a :class:`Config` (the layer sizes,
the batch size, the optimizer and its learning rate, weight decay, BatchNorm,
the initial weight scale) and, from seeds, the starting weights (the fastbp
net's initialisation) and a pool of batches.  Every contender copies the
weights and cycles through the pool in the same order, so they all do the
same arithmetic step after step: forward, softmax cross-entropy, backward and
the optimizer's update.  The train-step suite's :class:`Shape` is the plain
case: one hidden layer, SGD, one batch.

Each maker returns a warmed-up :class:`Contender` (JIT compilation and device
start-up happen here, never in the timed region) or raises
:class:`Unavailable`.  A step's call returns the loss before its update (the
floor: its products).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

import fastbp.optim as optim
from fastbp.backends import get_backend, to_numpy
from fastbp.benchmarks import textbook as textbook_code
from fastbp.benchmarks.textbook import TextbookNet
from fastbp.benchmarks.timing import Contender
from fastbp.nets import MultiLayerNet
from fastbp.sysinfo import usable_cpus

LR = 0.01
#: optimizer key -> (class name in fastbp.optim and in the textbook code, its hyper-parameters)
OPTIMIZERS = {
    "sgd": ("SGD", {}),
    "momentum": ("Momentum", {"momentum": 0.9}),
    "nesterov": ("Nesterov", {"momentum": 0.9}),
    "adagrad": ("AdaGrad", {"eps": 1e-10}),
    "rmsprop": ("RMSprop", {"decay_rate": 0.99, "eps": 1e-8}),
    "adam": ("Adam", {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
}
#: BatchNorm's eps in fastbp and in the textbook (its ``10e-7``); PyTorch is given the same
BATCHNORM_EPS = 1e-6


class Config(NamedTuple):
    """What one training step trains: the net, its optimizer and the pool of batches.

    ``sizes`` is ``(inputs, *hidden, outputs)``; ``init`` is fastbp's
    ``weight_init_std`` (a number or "he"); weight decay adds ``lambda * W``
    to each weight gradient (PyTorch's ``weight_decay``, on the weights only);
    ``pool`` distinct seeded batches are cycled, so no step sees the batch of
    the step before unless the pool holds one; ``dropout`` is the ratio of a
    dropout after every hidden activation (None: no dropout layers).
    """

    sizes: tuple
    batch: int
    optimizer: str = "sgd"
    lr: float = LR
    weight_decay: float = 0.0
    batchnorm: bool = False
    init: float | str = 0.01
    pool: int = 1
    dropout: float | None = None

    @property
    def label(self) -> str:
        extras = [OPTIMIZERS[self.optimizer][0]]
        if self.weight_decay:
            extras.append(f"weight decay {self.weight_decay:g}")
        if self.batchnorm:
            extras.append("BatchNorm")
        if self.dropout is not None:
            extras.append(f"dropout {self.dropout:g}")
        return f"{'-'.join(map(str, self.sizes))} {' + '.join(extras)}, B={self.batch}"

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        bn = 2 * sum(self.sizes[1:-1]) if self.batchnorm else 0
        return sum(a * b + b for a, b in pairs) + bn

    def optimizer_from(self, module):
        """This config's optimizer, from ``fastbp.optim`` or the textbook code (same names)."""
        name, hyper = OPTIMIZERS[self.optimizer]
        return getattr(module, name)(self.lr, **hyper)


class Shape(NamedTuple):
    """The train-step suite's net: ``n_in-hidden-n_out``, plain SGD, one batch."""

    n_in: int
    hidden: int
    n_out: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.n_in}-{self.hidden}-{self.n_out} B={self.batch}"

    @property
    def n_params(self) -> int:
        return self.config.n_params

    @property
    def config(self) -> Config:
        return Config((self.n_in, self.hidden, self.n_out), self.batch)


class Unavailable(Exception):
    """A contender that cannot run here (peer not installed, no GPU); the message says why."""


class Problem:
    """The seeded starting weights and pool of batches that every contender copies.

    ``spec`` is a :class:`Config` or a :class:`Shape`.  ``batches`` holds
    ``config.pool`` pairs ``(x, t)`` (standard-normal inputs, uniform labels);
    ``x`` and ``t`` are the first.
    """

    def __init__(self, spec, dtype: str, seed: int = 0):
        self.config = spec.config if isinstance(spec, Shape) else spec
        self.dtype, self.seed = np.dtype(dtype), seed
        self.params = {k: np.array(v) for k, v in self._seeded_net("numpy").params.items()}
        c, rng = self.config, np.random.default_rng(seed + 1)
        self.batches = []
        for _ in range(c.pool):
            x = rng.standard_normal((c.batch, c.sizes[0])).astype(self.dtype)
            self.batches.append((x, rng.integers(0, c.sizes[-1], c.batch)))
        self.x, self.t = self.batches[0]

    def _seeded_net(self, backend) -> MultiLayerNet:
        c = self.config
        return MultiLayerNet(c.sizes[0], list(c.sizes[1:-1]), c.sizes[-1], weight_init_std=c.init,
                             weight_decay_lambda=c.weight_decay, use_batchnorm=c.batchnorm,
                             use_dropout=c.dropout is not None,
                             dropout_ratio=0.5 if c.dropout is None else c.dropout,
                             seed=self.seed, backend=backend, dtype=self.dtype)

    def net(self, backend) -> MultiLayerNet:
        """A fastbp net of this config on ``backend``, holding the starting weights."""
        net = self._seeded_net(backend)
        for key, value in self.params.items():
            net.params[key][...] = net.backend.asarray(value)
        return net


def cycling(items):
    """A zero-argument callable returning ``items`` in turn, forever."""
    return itertools.cycle(list(items)).__next__


# ------------------------------------------------------------------ makers
def textbook(problem: Problem) -> Contender:
    net = TextbookNet(problem.params, weight_decay_lambda=problem.config.weight_decay,
                      dropout_ratio=problem.config.dropout, seed=problem.seed)
    opt, batch = problem.config.optimizer_from(textbook_code), cycling(problem.batches)
    return _warm(Contender("textbook", lambda: net.train_step(*batch(), opt),
                           params=lambda: dict(net.params)))


def fastbp_backend(name: str):
    """Maker for ``net.train_step`` on the fastbp backend ``name``."""

    def make(problem: Problem) -> Contender:
        try:
            backend = get_backend(name)
        except ImportError as exc:
            raise Unavailable(str(exc)) from None
        net, opt = problem.net(backend), problem.config.optimizer_from(optim)
        batch = cycling((backend.asarray(x), backend.asarray(t)) for x, t in problem.batches)
        sync = backend.synchronize if backend.gpu else None
        return _warm(Contender(f"fastbp-{name}", lambda: net.train_step(*batch(), opt), sync=sync,
                               params=lambda: {k: to_numpy(v) for k, v in net.params.items()}))

    return make


def import_torch(device):
    """The ``torch`` module, or :class:`Unavailable` saying why it cannot run on ``device``."""
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("PyTorch sees no CUDA device")
    return torch


def torch_net(torch, problem: Problem, device: str):
    """``torch.nn.Sequential`` of ``problem``'s net, its weights, and the config's ``torch.optim``.

    Returns ``(model, optimizer, params)``; ``params()`` reads the weights back
    as NumPy arrays keyed like fastbp's.  Weight decay goes to the weights'
    parameter group only, as fastbp and the textbook decay ``W`` and not ``b``.
    """
    c, p = problem.config, problem.params
    dtype = getattr(torch, problem.dtype.name)
    modules, named = [], {}
    for i, (n_in, n_out) in enumerate(zip(c.sizes[:-1], c.sizes[1:]), start=1):
        modules.append(torch.nn.Linear(n_in, n_out))
        named[f"W{i}"], named[f"b{i}"] = modules[-1].weight, modules[-1].bias
        if i < c.n_layers:
            if c.batchnorm:
                modules.append(torch.nn.BatchNorm1d(n_out, eps=BATCHNORM_EPS))
                named[f"gamma{i}"], named[f"beta{i}"] = modules[-1].weight, modules[-1].bias
            modules.append(torch.nn.ReLU())
            if c.dropout is not None:
                modules.append(torch.nn.Dropout(c.dropout))
    model = torch.nn.Sequential(*modules).to(device, dtype)
    with torch.no_grad():  # torch keeps W transposed: (out, in)
        for key, tensor in named.items():
            tensor.copy_(torch.from_numpy(p[key].T.copy() if key[0] == "W" else p[key]))
    groups = model.parameters()
    if c.weight_decay:
        groups = [{"params": [t for k, t in named.items() if k[0] == "W"],
                   "weight_decay": c.weight_decay},
                  {"params": [t for k, t in named.items() if k[0] != "W"], "weight_decay": 0.0}]
    opt = _torch_optimizer(torch, c, groups)

    def params():
        return {k: t.detach().cpu().numpy().T.copy() if k[0] == "W" else t.detach().cpu().numpy()
                for k, t in named.items()}

    return model, opt, params


def _torch_optimizer(torch, c: Config, groups):
    """The ``torch.optim`` optimizer whose rule is the config's fastbp one, same hyper-parameters."""
    _, hyper = OPTIMIZERS[c.optimizer]
    if c.optimizer == "adam":
        return torch.optim.Adam(groups, lr=c.lr, betas=(hyper["beta1"], hyper["beta2"]),
                                eps=hyper["eps"])
    if c.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=c.lr, eps=hyper["eps"])
    if c.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=c.lr, alpha=hyper["decay_rate"], eps=hyper["eps"])
    return torch.optim.SGD(groups, lr=c.lr, momentum=hyper.get("momentum", 0.0),
                           nesterov=c.optimizer == "nesterov")


def torch_step(device: str):
    """Maker for ``torch.nn`` + CrossEntropyLoss + the config's ``torch.optim`` on ``device``."""

    def make(problem: Problem) -> Contender:
        torch = import_torch(device)
        if device == "cpu":
            torch.set_num_threads(usable_cpus())  # as many threads as BLAS and numba
        model, opt, params = torch_net(torch, problem, device)
        loss_fn = torch.nn.CrossEntropyLoss()
        batch = cycling((torch.from_numpy(x).to(device), torch.from_numpy(t).to(device))
                        for x, t in problem.batches)
        decay = problem.config.weight_decay
        weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]

        def step():
            x, t = batch()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), t)
            if decay:  # the loss the others report: torch's weight_decay changes only the gradient
                with torch.no_grad():
                    penalty = 0.5 * decay * sum(w.square().sum() for w in weights)
            loss.backward()
            opt.step()
            return loss.detach() + penalty if decay else loss.detach()

        sync = torch.cuda.synchronize if device == "cuda" else None
        name = "torch" if device == "cpu" else "torch-cuda"
        return _warm(Contender(name, step, sync=sync, params=params))

    return make


def jax_step(problem: Problem) -> Contender:
    """``jax.value_and_grad`` and the SGD update in one ``jax.jit`` (parameters donated)."""
    c = problem.config
    if c.n_layers != 2 or c.optimizer != "sgd" or c.weight_decay or c.batchnorm:
        raise Unavailable("the JAX contender does plain SGD on one hidden layer only")
    try:
        import jax
    except ImportError:
        raise Unavailable("JAX is not installed") from None
    jax.config.update("jax_enable_x64", True)  # float64 needs it; float32 arrays stay float32
    import jax.numpy as jnp

    def loss(params, x, t):
        h = jax.nn.relu(x @ params["W1"] + params["b1"])
        log_probs = jax.nn.log_softmax(h @ params["W2"] + params["b2"])
        return -jnp.mean(jnp.take_along_axis(log_probs, t[:, None], axis=1))

    def update(params, x, t):
        value, grads = jax.value_and_grad(loss)(params, x, t)
        return jax.tree_util.tree_map(lambda p, g: p - c.lr * g, params, grads), value

    step = jax.jit(update, donate_argnums=0)
    device = jax.devices("cpu")[0]
    state = {"params": jax.device_put(problem.params, device)}
    batch = cycling(jax.device_put(b, device) for b in problem.batches)

    def run():
        state["params"], value = step(state["params"], *batch())
        return jax.block_until_ready((state["params"], value))[1]

    return _warm(Contender("jax", run,
                           params=lambda: {k: np.asarray(v) for k, v in state["params"].items()}))


def floor(problem: Problem, xp=np, name="floor", sync=None) -> Contender:
    """The step's matrix products alone (:func:`step_products`), with ``xp`` (NumPy's BLAS, or CuPy)."""
    xs, weights, dy = _floor_operands(problem)
    products = step_products([xp.asarray(x) for x in xs], [xp.asarray(w) for w in weights],
                             xp.asarray(dy), xp=xp)
    return _warm(Contender(name, products, sync=sync))


def cupy_floor(problem: Problem) -> Contender:
    try:
        import cupy
    except ImportError:
        raise Unavailable("CuPy is not installed") from None
    return floor(problem, cupy, "floor-cupy", cupy.cuda.Device().synchronize)


def _floor_operands(problem: Problem):
    c, dtype = problem.config, problem.dtype
    rng = np.random.default_rng(2)
    dy = rng.standard_normal((c.batch, c.sizes[-1])).astype(dtype)
    weights = [problem.params[f"W{i}"] for i in range(1, c.n_layers + 1)]
    return [x for x, _ in problem.batches], weights, dy


def step_products(xs, weights, dy, xp=np):
    """A callable doing a step's ``3L - 1`` matrix products into preallocated outputs.

    For ``L`` weight matrices: ``L`` forward products ``a_i = a_{i-1} @ W_i``
    (``a_0`` the batch, taken in turn from ``xs``), then from the top down the
    ``L`` weight gradients ``a_{i-1}.T @ d_i`` and the ``L - 1`` input
    gradients ``d_{i-1} = d_i @ W_i.T`` (``d_L`` is ``dy``), so the data flow is
    the step's.  The callable returns the results in that order: for two
    layers ``h, out, dW2, dh, dW1``.
    """
    n, dtype = xs[0].shape[0], xs[0].dtype
    acts = [xp.empty((n, W.shape[1]), dtype) for W in weights]
    dWs = [xp.empty(W.shape, dtype) for W in weights]
    ds = [xp.empty((n, W.shape[1]), dtype) for W in weights[:-1]] + [dy]

    def plan(x):
        """``(a, b, out)`` of each product, in order, for the batch ``x``."""
        inputs = [x, *acts[:-1]]
        ops = list(zip(inputs, weights, acts))
        for i in reversed(range(len(weights))):
            ops.append((inputs[i].T, ds[i], dWs[i]))
            if i:
                ops.append((ds[i], weights[i].T, ds[i - 1]))
        return ops

    # built once per batch of the pool: the timed calls only multiply
    plans = cycling((ops, tuple(out for _, _, out in ops)) for ops in map(plan, xs))
    matmul = xp.matmul

    def products():
        ops, results = plans()
        for a, b, out in ops:
            matmul(a, b, out=out)
        return results

    return products


def _warm(contender: Contender) -> Contender:
    """Run once so compilation and first-touch allocation stay out of the timing."""
    contender.fn()
    if contender.sync:
        contender.sync()
    return contender


#: contender name -> maker, in table order; CPU contenders then GPU ones.
CPU_MAKERS = {
    "textbook": textbook,
    "fastbp-numpy": fastbp_backend("numpy"),
    "fastbp-numba": fastbp_backend("numba"),
    "torch": torch_step("cpu"),
    "jax": jax_step,
    "floor": floor,
}
GPU_MAKERS = {
    "fastbp-cupy": fastbp_backend("cupy"),
    "torch-cuda": torch_step("cuda"),
    "floor-cupy": cupy_floor,
}


def make_contenders(problem: Problem, names, skipped: dict) -> list:
    """The contenders ``names`` that can run here; the others go into ``skipped`` with why."""
    makers = {**CPU_MAKERS, **GPU_MAKERS}
    contenders = []
    for name in names:
        try:
            contenders.append(makers[name](problem))
        except Unavailable as exc:
            skipped[name] = str(exc)
    return contenders

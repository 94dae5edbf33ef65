"""The train-step contenders: one SGD step of the same two-layer net, done by each.

Every contender starts from the same weights (the fastbp net's seeded
initialisation) and the same batch, so they all do the same arithmetic:
forward, softmax cross-entropy, backward and ``p -= lr * g``.  Each maker
returns a warmed-up :class:`Contender` (JIT compilation and device start-up
happen here, never in the timed region) or raises :class:`Unavailable`.  A
step's call returns the loss before its update (the floor: its products).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

import fastbp
from fastbp.benchmarks.textbook import TextbookNet
from fastbp.benchmarks.timing import Contender
from fastbp.nets import TwoLayerNet
from fastbp.optim import SGD

LR = 0.01


class Shape(NamedTuple):
    n_in: int
    hidden: int
    n_out: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.n_in}-{self.hidden}-{self.n_out} B={self.batch}"

    @property
    def n_params(self) -> int:
        return self.n_in * self.hidden + self.hidden + self.hidden * self.n_out + self.n_out


class Unavailable(Exception):
    """A contender that cannot run here (peer not installed, no GPU); the message says why."""


class Problem:
    """The seeded starting weights and batch that every contender copies."""

    def __init__(self, shape: Shape, dtype: str, seed: int = 0):
        self.shape, self.dtype = shape, np.dtype(dtype)
        net = TwoLayerNet(shape.n_in, shape.hidden, shape.n_out, weight_init_std=0.01,
                          seed=seed, backend="numpy", dtype=dtype)
        self.params = {k: np.array(v) for k, v in net.params.items()}
        rng = np.random.default_rng(seed + 1)
        self.x = rng.standard_normal((shape.batch, shape.n_in)).astype(self.dtype)
        self.t = rng.integers(0, shape.n_out, shape.batch)


# ------------------------------------------------------------------ makers
def textbook(problem: Problem) -> Contender:
    net = TextbookNet(problem.params)
    x, t = problem.x, problem.t
    return _warm(Contender("textbook", lambda: net.train_step(x, t, LR)))


def fastbp_backend(name: str):
    """Maker for ``net.train_step`` on the fastbp backend ``name``."""

    def make(problem: Problem) -> Contender:
        try:
            backend = fastbp.get_backend(name)
        except ImportError as exc:
            raise Unavailable(str(exc)) from None
        s = problem.shape
        net = TwoLayerNet(s.n_in, s.hidden, s.n_out, backend=backend, dtype=problem.dtype)
        for key, value in problem.params.items():
            net.params[key][...] = backend.asarray(value)
        x, t, opt = backend.asarray(problem.x), backend.asarray(problem.t), SGD(LR)
        sync = backend.synchronize if backend.gpu else None
        return _warm(Contender(f"fastbp-{name}", lambda: net.train_step(x, t, opt), sync=sync))

    return make


def _torch_device(device):
    try:
        import torch
    except ImportError:
        raise Unavailable("PyTorch is not installed") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("PyTorch sees no CUDA device")
    return torch


def torch_step(device: str):
    """Maker for ``torch.nn`` + CrossEntropyLoss + ``torch.optim.SGD`` on ``device``."""

    def make(problem: Problem) -> Contender:
        torch = _torch_device(device)
        if device == "cpu":
            torch.set_num_threads(os.cpu_count())
        dtype = getattr(torch, problem.dtype.name)
        s, p = problem.shape, problem.params
        model = torch.nn.Sequential(torch.nn.Linear(s.n_in, s.hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(s.hidden, s.n_out)).to(device, dtype)
        with torch.no_grad():  # torch keeps W transposed: (out, in)
            for layer, w, b in ((model[0], "W1", "b1"), (model[2], "W2", "b2")):
                layer.weight.copy_(torch.from_numpy(p[w].T.copy()))
                layer.bias.copy_(torch.from_numpy(p[b]))
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        x = torch.from_numpy(problem.x).to(device)
        t = torch.from_numpy(problem.t).to(device)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), t)
            loss.backward()
            opt.step()
            return loss.detach()

        sync = torch.cuda.synchronize if device == "cuda" else None
        name = "torch" if device == "cpu" else "torch-cuda"
        return _warm(Contender(name, step, sync=sync))

    return make


def jax_step(problem: Problem) -> Contender:
    """``jax.value_and_grad`` and the SGD update in one ``jax.jit`` (parameters donated)."""
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
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), value

    step = jax.jit(update, donate_argnums=0)
    device = jax.devices("cpu")[0]
    state = {"params": jax.device_put(problem.params, device)}
    x, t = jax.device_put(problem.x, device), jax.device_put(problem.t, device)

    def run():
        state["params"], value = step(state["params"], x, t)
        return jax.block_until_ready((state["params"], value))[1]

    return _warm(Contender("jax", run))


def floor(problem: Problem, xp=np, name="floor", sync=None) -> Contender:
    """The step's five matrix products alone, with ``xp`` (NumPy's BLAS, or CuPy)."""
    products = five_products(*(xp.asarray(a) for a in _floor_operands(problem)), xp=xp)
    return _warm(Contender(name, products, sync=sync))


def cupy_floor(problem: Problem) -> Contender:
    try:
        import cupy
    except ImportError:
        raise Unavailable("CuPy is not installed") from None
    return floor(problem, cupy, "floor-cupy", cupy.cuda.Device().synchronize)


def _floor_operands(problem: Problem):
    s, dtype = problem.shape, problem.dtype
    rng = np.random.default_rng(2)
    dy = rng.standard_normal((s.batch, s.n_out)).astype(dtype)
    return problem.x, problem.params["W1"], problem.params["W2"], dy


def five_products(x, W1, W2, dy, xp=np):
    """A callable doing ``x@W1, h@W2, h.T@dy, dy@W2.T, x.T@dh`` into preallocated outputs.

    The hidden activation ``h`` is the first product and ``dh`` the fourth,
    so the data flow is the step's; the callable returns the five results.
    """
    n, n_in = x.shape
    hidden, n_out = W2.shape
    h = xp.empty((n, hidden), x.dtype)
    out = xp.empty((n, n_out), x.dtype)
    dW2 = xp.empty((hidden, n_out), x.dtype)
    dh = xp.empty((n, hidden), x.dtype)
    dW1 = xp.empty((n_in, hidden), x.dtype)

    def products():
        xp.matmul(x, W1, out=h)
        xp.matmul(h, W2, out=out)
        xp.matmul(h.T, dy, out=dW2)
        xp.matmul(dy, W2.T, out=dh)
        xp.matmul(x.T, dh, out=dW1)
        return h, out, dW2, dh, dW1

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

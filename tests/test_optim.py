import inspect
import math

import numpy
import pytest
from conftest import assert_close, host

from fastbp.optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop, clip_by_global_norm


def _params(backend):
    return {"W": backend.asarray(numpy.ones((2, 3))), "b": backend.asarray(numpy.zeros(3))}


def test_sgd_updates_in_place(backend):
    params = _params(backend)
    W = params["W"]
    SGD(lr=0.5).update(params, {"W": backend.asarray(numpy.full((2, 3), 2.0)),
                                "b": backend.asarray(numpy.ones(3))})
    assert params["W"] is W
    numpy.testing.assert_array_equal(host(W), numpy.zeros((2, 3)))
    numpy.testing.assert_array_equal(host(params["b"]), numpy.full(3, -0.5))


@pytest.mark.parametrize("lr", [0, -1.0])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(ValueError, match=f"SGD: lr must be > 0, received {lr}"):
        SGD(lr=lr)


# ------------------------------------------------------------ every optimizer
def _sgd(p, g, s, t, lr):
    return p - lr * g


def _momentum(p, g, s, t, lr, momentum, nesterov=False):
    """PyTorch's form: a buffer of summed gradients, not the textbook's velocity."""
    s["buf"] = momentum * s.get("buf", 0) + g
    return p - lr * (g + momentum * s["buf"] if nesterov else s["buf"])


def _adagrad(p, g, s, t, lr, eps=1e-10):
    s["h"] = s.get("h", 0) + g ** 2
    return p - lr * g / (numpy.sqrt(s["h"]) + eps)


def _rmsprop(p, g, s, t, lr, decay_rate, eps=1e-8):
    s["h"] = decay_rate * s.get("h", 0) + (1 - decay_rate) * g ** 2
    return p - lr * g / (numpy.sqrt(s["h"]) + eps)


def _adam(p, g, s, t, lr, beta1, beta2, eps=1e-8):
    s["m"] = beta1 * s.get("m", 0) + (1 - beta1) * g
    s["v"] = beta2 * s.get("v", 0) + (1 - beta2) * g ** 2
    m_hat, v_hat = s["m"] / (1 - beta1 ** t), s["v"] / (1 - beta2 ** t)
    return p - lr * m_hat / (numpy.sqrt(v_hat) + eps)


#: (optimizer, non-default hyper-parameters, an independent NumPy formula of its update)
CASES = [
    (SGD, {"lr": 0.1}, _sgd),
    (Momentum, {"lr": 0.1, "momentum": 0.8}, _momentum),
    (Nesterov, {"lr": 0.1, "momentum": 0.8}, lambda *a, **k: _momentum(*a, **k, nesterov=True)),
    (AdaGrad, {"lr": 0.1}, _adagrad),
    (RMSprop, {"lr": 0.05, "decay_rate": 0.9}, _rmsprop),
    (Adam, {"lr": 0.01, "beta1": 0.8, "beta2": 0.99}, _adam),
]
OPTIMIZERS = [case[0] for case in CASES]
ids = [cls.__name__ for cls in OPTIMIZERS]


def _problem(n_steps=5, seed=0):
    """Start values and a gradient sequence; ``b``'s gradients are tiny, so eps matters."""
    rng = numpy.random.default_rng(seed)
    start = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    grads = [{"W": rng.standard_normal((4, 3)), "b": 1e-6 * rng.standard_normal(3)}
             for _ in range(n_steps)]
    return start, grads


def _run(opt, backend, start, grads, dtype="float64"):
    """``params`` made from copies of ``start`` after ``opt`` applied every step of ``grads``."""
    params = {k: backend.asarray(v.copy(), dtype=dtype) for k, v in start.items()}
    for g in grads:
        opt.update(params, {k: backend.asarray(v, dtype=dtype) for k, v in g.items()},
                   backend=backend)
    return params


@pytest.mark.parametrize("cls, hyper, formula", CASES, ids=ids)
def test_update_matches_the_formula(backend, cls, hyper, formula):
    start, grads = _problem()
    params = _run(cls(**hyper), backend, start, grads)
    for key, p in start.items():
        state = {}
        for t, g in enumerate(grads, start=1):
            p = formula(p, g[key], state, t, **hyper)
        assert_close(params[key], p, "float64", key)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=ids)
def test_defaults_are_the_textbook_ones(cls):
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
    expected = {SGD: {"lr": 0.01}, Momentum: {"lr": 0.01, "momentum": 0.9},
                Nesterov: {"lr": 0.01, "momentum": 0.9}, AdaGrad: {"lr": 0.01, "eps": 1e-10},
                RMSprop: {"lr": 0.01, "decay_rate": 0.99, "eps": 1e-8},
                Adam: {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}[cls]
    assert defaults == {**expected, "clip_norm": None}


def _torch_optimizer(torch, cls, params, hyper):
    lr = hyper["lr"]
    if cls is SGD:
        return torch.optim.SGD(params, lr=lr)
    if cls in (Momentum, Nesterov):
        return torch.optim.SGD(params, lr=lr, momentum=hyper["momentum"], nesterov=cls is Nesterov)
    if cls is AdaGrad:
        return torch.optim.Adagrad(params, lr=lr)
    if cls is RMSprop:
        return torch.optim.RMSprop(params, lr=lr, alpha=hyper["decay_rate"])
    return torch.optim.Adam(params, lr=lr, betas=(hyper["beta1"], hyper["beta2"]))


@pytest.mark.parametrize("clip_norm", [None, 0.5])
@pytest.mark.parametrize("cls, hyper, formula", CASES, ids=ids)
def test_update_matches_pytorch(backend, cls, hyper, formula, clip_norm):
    """Same defaults (eps included) and the same trajectory as torch.optim over five steps."""
    torch = pytest.importorskip("torch")
    start, grads = _problem()
    params = _run(cls(**hyper, clip_norm=clip_norm), backend, start, grads)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    opt = _torch_optimizer(torch, cls, list(tensors.values()), hyper)
    for g in grads:
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(g[key])
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip_norm)
        opt.step()
    for key, tensor in tensors.items():
        assert_close(params[key], tensor.detach().numpy(), "float64", key)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=ids)
def test_state_and_params_keep_float32(backend, cls):
    start, grads = _problem(n_steps=2)
    opt = cls(clip_norm=1.0)
    params = _run(opt, backend, start, grads, dtype="float32")
    state = [a for name in opt.state_names for a in getattr(opt, name).values()]
    arrays = [*params.values(), *state]
    assert len(arrays) == 2 * (1 + len(opt.state_names))
    for a in arrays:
        assert isinstance(a, backend.xp.ndarray) and a.dtype == numpy.float32


BAD_HYPER = [
    (Momentum, {"momentum": 1.0}, r"Momentum: momentum must be in \[0, 1\), received 1.0"),
    (Nesterov, {"momentum": -0.1}, r"Nesterov: momentum must be in \[0, 1\), received -0.1"),
    (AdaGrad, {"eps": 0}, "AdaGrad: eps must be > 0, received 0"),
    (RMSprop, {"eps": 0}, "RMSprop: eps must be > 0, received 0"),
    (Adam, {"eps": -1e-8}, "Adam: eps must be > 0, received -1e-08"),
    (RMSprop, {"decay_rate": 1}, r"RMSprop: decay_rate must be in \[0, 1\), received 1"),
    (Adam, {"beta1": 1.5}, r"Adam: beta1 must be in \[0, 1\), received 1.5"),
    (Adam, {"beta2": float("nan")}, r"Adam: beta2 must be a finite number in \[0, 1\), received nan"),
    (Adam, {"lr": "fast"}, "Adam: lr must be a finite number > 0, received 'fast'"),
    (Adam, {"lr": "0.1"}, "Adam: lr must be a finite number > 0, received '0.1'"),
    (SGD, {"lr": True}, "SGD: lr must be a finite number > 0, received True"),
    (SGD, {"lr": float("inf")}, "SGD: lr must be a finite number > 0, received inf"),
    (Momentum, {"momentum": numpy.bool_(False)}, r"Momentum: momentum must be a finite number in \[0, 1\), received "
                                                 r"(np\.)?False"),
    (SGD, {"clip_norm": 0}, "SGD: clip_norm must be > 0, received 0"),
    (RMSprop, {"clip_norm": -1.0}, "RMSprop: clip_norm must be > 0, received -1.0"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD_HYPER)
def test_bad_hyper_parameters_are_refused(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def _state_copy(opt):
    return {name: {k: host(a).copy() for k, a in getattr(opt, name).items()}
            for name in opt.state_names}


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=ids)
@pytest.mark.parametrize("grads, message", [
    (lambda be: {"W": be.asarray(numpy.ones((2, 3)))}, "same keys"),
    (lambda be: {"W": be.asarray(numpy.ones((2, 3))), "b": be.asarray(numpy.ones(4))},
     r"grads\['b'\] must have shape \(3,\), received \(4,\)"),
])
def test_bad_grads_change_neither_params_nor_state(backend, cls, grads, message):
    """Every optimizer, SGD included: refused before anything moves, fresh or with state."""
    opt, params = cls(clip_norm=0.1), _params(backend)
    for _ in range(2):  # once on a fresh optimizer, once after a good step
        before, state = _snapshot(params), _state_copy(opt)
        with pytest.raises(ValueError, match=f"{cls.__name__}.update: .*{message}"):
            opt.update(params, grads(backend))
        _assert_same(params, before)
        assert _state_copy(opt).keys() == state.keys()
        for name, arrays in state.items():
            assert getattr(opt, name).keys() == arrays.keys()
            _assert_same(getattr(opt, name), arrays)
        opt.update(params, {k: backend.asarray(numpy.ones(p.shape)) for k, p in params.items()})


def _snapshot(arrays):
    return {k: host(a).copy() for k, a in arrays.items()}


def _assert_same(arrays, expected):
    for k, value in expected.items():
        numpy.testing.assert_array_equal(host(arrays[k]), value)


@pytest.mark.parametrize("cls", [Momentum, Adam], ids=["Momentum", "Adam"])
def test_params_that_change_shape_need_a_new_optimizer(backend, cls):
    opt = cls()
    opt.update(_params(backend), {"W": backend.asarray(numpy.ones((2, 3))),
                                  "b": backend.asarray(numpy.ones(3))})
    params = {"W": backend.asarray(numpy.ones((3, 3))), "b": backend.asarray(numpy.zeros(3))}
    before = _snapshot(params)
    with pytest.raises(ValueError, match=r"params\['W'\] must keep the shape \(2, 3\) .* "
                                         r"received \(3, 3\); use a new optimizer"):
        opt.update(params, {k: backend.asarray(numpy.ones(p.shape)) for k, p in params.items()})
    _assert_same(params, before)


def test_adam_counts_steps_per_parameter(backend):
    """A parameter that joins late gets the bias correction of its own first step."""
    opt, start, grads = Adam(lr=0.1), *_problem(n_steps=3)
    params = {"W": backend.asarray(start["W"].copy())}
    for g in grads[:2]:
        opt.update(params, {"W": backend.asarray(g["W"])})
    params["b"] = backend.asarray(start["b"].copy())
    opt.update(params, {k: backend.asarray(v) for k, v in grads[2].items()})
    assert opt.step == {"W": 3, "b": 1}
    fresh = _run(Adam(lr=0.1), backend, {"b": start["b"]}, [{"b": grads[2]["b"]}])
    assert_close(params["b"], fresh["b"], "float64", "b")


# ------------------------------------------------------------------ clipping
def test_clipping_scales_a_copy_to_the_global_norm(backend):
    g = {"W": backend.asarray(numpy.full((2, 3), 2.0)), "b": backend.asarray(numpy.full(3, 2.0))}
    clipped = clip_by_global_norm(g, 1.5, backend)
    norm = math.sqrt(sum(float((host(a) ** 2).sum()) for a in clipped.values()))
    assert norm == pytest.approx(1.5, rel=1e-6)
    numpy.testing.assert_array_equal(host(g["W"]), numpy.full((2, 3), 2.0))  # untouched
    assert clip_by_global_norm(g, 100.0, backend) is g  # below the limit: as it was


def test_clipped_update_leaves_the_callers_grads_alone(backend):
    params, grads = _params(backend), {"W": backend.asarray(numpy.full((2, 3), 2.0)),
                                       "b": backend.asarray(numpy.full(3, 2.0))}
    SGD(lr=1.0, clip_norm=0.3).update(params, grads)
    numpy.testing.assert_array_equal(host(grads["W"]), numpy.full((2, 3), 2.0))
    step = numpy.concatenate([1 - host(params["W"]).ravel(), -host(params["b"])])
    assert numpy.linalg.norm(step) == pytest.approx(0.3, rel=1e-5)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=ids)
def test_integer_params_are_refused_before_anything_moves(backend, cls):
    """An int parameter cannot be updated in place: refused with a ValueError naming it,
    before the other keys are updated or any state or step count is made."""
    opt = cls()
    params = {"W": backend.asarray(numpy.ones(3)), "n": backend.asarray(numpy.ones(2, dtype=int))}
    grads = {"W": backend.asarray(numpy.ones(3)), "n": backend.asarray(numpy.ones(2))}
    with pytest.raises(ValueError, match=rf"{cls.__name__}.update: params\['n'\] must be a "
                                         "floating-point array"):
        opt.update(params, grads)
    numpy.testing.assert_array_equal(host(params["W"]), numpy.ones(3))
    assert opt.step == {}
    for name in opt.state_names:
        assert getattr(opt, name) == {}


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=ids)
def test_grads_that_are_not_arrays_are_named(backend, cls):
    params = _params(backend)
    before = _snapshot(params)
    grads = {k: host(p).tolist() for k, p in params.items()}
    with pytest.raises(ValueError, match=rf"{cls.__name__}.update: grads\['W'\] must be an array "
                                         r"of shape \(2, 3\), received list"):
        cls().update(params, grads)
    _assert_same(params, before)


@pytest.mark.parametrize("make, message", [
    (lambda: Adam(eps=1e-20), r"eps 1e-20 lies below 1.084e-19, the square root of float32's "
                              r"smallest normal number, so dividing by it would magnify"),
    (lambda: AdaGrad(eps=1e-40), r"eps 1e-40 lies below 1.084e-19"),
    (lambda: RMSprop(eps=1e-39), r"eps 1e-39 lies below 1.084e-19"),
    (lambda: SGD(lr=1e39), r"lr 1e\+39 lies outside float32's normal numbers .* would be inf"),
    (lambda: Momentum(lr=1e-40), r"lr 1e-40 lies outside float32's normal numbers .* would be 0")])
def test_settings_beyond_float32s_range_are_refused_before_anything_moves(backend, make, message):
    """1e39 is inf in float32, the fused passes read 1e-40 as 0 (0 / (0 + eps) is NaN), and an
    eps below sqrt(tiny) would magnify what they flush into whole steps."""
    from fastbp.nets import MultiLayerNet

    net = MultiLayerNet(4, [3], 2, seed=0, backend=backend, dtype="float32")
    before, opt = _snapshot(net.params), make()
    x, t = numpy.ones((2, 4)), numpy.array([0, 1])
    with pytest.raises(ValueError, match=rf"MultiLayerNet.train_step: {type(opt).__name__}'s "
                                         + message):
        net.train_step(x, t, opt)
    with pytest.raises(ValueError, match=rf"{type(opt).__name__}.update: .*" + message):
        opt.update(net.params, net.gradient(x, t), backend=backend)
    _assert_same(net.params, before)
    assert all(not getattr(opt, state) for state in opt.state_names)
    net64 = MultiLayerNet(4, [3], 2, seed=0, backend=backend)  # float64 holds them
    net64.train_step(x, t, make())


@pytest.mark.parametrize("dtype, eps", [("float32", 2e-19), ("float64", 2e-154)])
def test_adam_refuses_an_eps_whose_bias_correction_is_below_the_floor(dtype, eps):
    # eps passes the floor sqrt(tiny), but eps * sqrt(1 - beta2) at step 1 does not
    params = {"W": numpy.ones(4, dtype=dtype)}
    grads = {"W": numpy.array([0, 0, 1, 1e-3], dtype=dtype)}
    Adam(lr=1e-3, eps=eps, beta2=0.0).update({"W": params["W"].copy()}, grads)  # no correction
    with pytest.raises(ValueError, match=r"Adam's eps .* times sqrt\(1 - beta2\) lies below"):
        Adam(lr=1e-3, eps=eps).update(params, grads)
    assert (params["W"] == 1).all()


@pytest.mark.parametrize("dtype, lr", [("float32", 2e-38), ("float64", 3e-308)])
def test_adam_refuses_an_lr_whose_bias_corrected_step_size_is_subnormal(dtype, lr):
    # lr is normal, lr * sqrt(1 - beta2) / (1 - beta1) at step 1 is not: numba read it as 0
    # and skipped the step the reference takes
    params = {"W": numpy.ones(4, dtype=dtype)}
    grads = {"W": numpy.array([0, 0, 1, 1e-3], dtype=dtype)}
    with pytest.raises(ValueError, match=r"Adam's lr .* sqrt\(1 - beta2\) / \(1 - beta1\) "
                                         r"lies below .* smallest normal"):
        Adam(lr=lr).update(params, grads)
    assert (params["W"] == 1).all()

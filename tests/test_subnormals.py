"""Optimizer state and softmax probabilities never hold subnormal numbers, on every backend."""

import numpy
import pytest
from conftest import PARITY_RTOL, host

from fastbp.optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop

#: per dtype, a gradient whose state starts a few dozen decays above the subnormals
START = {"float64": 1e-300, "float32": 1e-36}
SQUARED_START = {"float64": 1e-150, "float32": 1e-18}  # for states that keep grad ** 2


def _subnormal(a):
    a = host(a)
    return (a != 0) & (abs(a) < numpy.finfo(a.dtype).tiny)


@pytest.mark.parametrize("make, states, squared", [
    (lambda: Momentum(lr=1.0, momentum=0.9), ("v",), False),
    (lambda: Nesterov(lr=1.0, momentum=0.9), ("v",), False),
    (lambda: RMSprop(lr=1.0, decay_rate=0.9), ("h",), True),
    (lambda: Adam(lr=1.0, beta1=0.9, beta2=0.9), ("m", "v"), False),  # v: grad ** 2 underflows
], ids=["Momentum", "Nesterov", "RMSprop", "Adam"])
def test_a_decaying_state_reaches_exact_zeros_never_subnormals(backend, dtype, make, states,
                                                                squared):
    optimizer = make()
    params = {"W": backend.asarray(numpy.zeros((3, 4)), dtype=dtype)}
    g = (SQUARED_START if squared else START)[dtype]
    first = backend.asarray(numpy.linspace(1, 3, 12).reshape(3, 4) * g, dtype=dtype)
    zero = backend.asarray(numpy.zeros((3, 4)), dtype=dtype)
    optimizer.update(params, {"W": first}, backend=backend)
    assert (host(getattr(optimizer, states[0])["W"]) != 0).all()
    for _ in range(200):  # 0.9 ** 200 takes the state from its start through the subnormals
        optimizer.update(params, {"W": zero}, backend=backend)
        for name in states:
            state = getattr(optimizer, name)["W"]
            assert state.dtype == numpy.dtype(dtype)
            assert not _subnormal(state).any(), f"{name} holds subnormals"
    for name in states:
        numpy.testing.assert_array_equal(host(getattr(optimizer, name)["W"]), 0)


def test_adagrad_state_of_tiny_gradients_is_flushed(backend, dtype):
    optimizer = AdaGrad(lr=1.0)
    g = {"float64": 1e-155, "float32": 1e-20}[dtype]  # grad ** 2 is subnormal
    params = {"W": backend.asarray(numpy.zeros(5), dtype=dtype)}
    optimizer.update(params, {"W": backend.asarray(numpy.full(5, g), dtype=dtype)}, backend=backend)
    numpy.testing.assert_array_equal(host(optimizer.h["W"]), 0)


def test_softmax_probabilities_are_flushed(backend, dtype):
    gap = {"float64": 720.0, "float32": 95.0}[dtype]  # exp(-gap) is subnormal in the dtype
    x = numpy.array([[0.0, -gap, 1.0], [-gap, 0.0, -gap / 2]])
    loss, probs = backend.softmax_cross_entropy(backend.asarray(x, dtype=dtype),
                                                backend.asarray(numpy.array([0, 1])))
    p = host(probs)
    assert not _subnormal(p).any()
    assert p[0, 1] == 0 and p[1, 0] == 0 and p[1, 2] > 0
    assert numpy.isfinite(float(loss))


#: magnitudes around the subnormals: below tiny, at it, squares below it, and ordinary values
def _near_subnormals(tiny):
    root = tiny ** 0.5
    return numpy.array([0, 0, 0, tiny / 7, tiny, 1.3 * tiny, 0.7 * root, 1.2 * root, 1e-3, 0.5])


_RULES_WITHOUT_EPS = {
    "SGD": lambda **_: SGD(lr=1.0),
    "Momentum": lambda **_: Momentum(lr=1.0, momentum=0.5),
    "Nesterov": lambda **_: Nesterov(lr=1.0, momentum=0.5),
}
#: the rules that divide by sqrt(state) + eps, with the eps of step 1 over their eps
_DIVIDING_RULES = {
    "AdaGrad": (lambda **eps: AdaGrad(lr=0.1, **eps), 1.0),
    "RMSprop": (lambda **eps: RMSprop(lr=0.1, decay_rate=0.5, **eps), 1.0),
    "Adam": (lambda **eps: Adam(lr=0.1, beta1=0.5, beta2=0.9, **eps), 0.1 ** 0.5),
}


@pytest.mark.parametrize("make, eps_factor, eps_scale", [
    *(pytest.param(make, None, None, id=name) for name, make in _RULES_WITHOUT_EPS.items()),
    *(pytest.param(make, factor, scale, id=f"{name}-{label}")
      for name, (make, factor) in _DIVIDING_RULES.items()
      for scale, label in ((None, "default-eps"), (8.0, "eps-8-sqrt-tiny")))])
def test_near_the_subnormals_backends_differ_only_within_the_documented_bound(
        accelerated, reference, dtype, make, eps_factor, eps_scale):
    """The fused passes treat subnormals as zero, the reference flushes stored state only
    (fpmode.py): state may differ by a few ``tiny``, a step by ``tiny / eps`` and by a
    relative ``sqrt(tiny) / eps`` through the denominator, and nothing more."""
    tiny = float(numpy.finfo(dtype).tiny)
    kwargs = {} if eps_scale is None else {"eps": eps_scale * tiny ** 0.5}
    ours, theirs = make(**kwargs), make(**kwargs)
    rtol = PARITY_RTOL[dtype]
    rng = numpy.random.default_rng(0)
    values = _near_subnormals(tiny)

    def draw():
        return rng.choice(values, 400) * rng.choice([-1, 1], 400)

    p0 = draw().astype(dtype)
    mine, ref = {"W": accelerated.asarray(p0, dtype=dtype)}, {"W": p0.copy()}
    moved, previous = numpy.zeros(p0.shape), p0.astype("float64")
    for k in range(1, 5):
        g = draw()
        ours.update(mine, {"W": accelerated.asarray(g, dtype=dtype)}, backend=accelerated)
        theirs.update(ref, {"W": g.astype(dtype)}, backend=reference)
        expected = ref["W"].astype("float64")
        moved += abs(expected - previous)
        previous = expected
        lost = 4 * k * k * tiny * max(1.0, ours.lr)  # what flushing can lose by step k
        if eps_factor is None:
            param_tol = lost
        else:
            eps = ours.eps * eps_factor
            param_tol = lost * (1 + 1 / eps) + moved * (4 * k * tiny) ** 0.5 / eps
        for name in ours.state_names:
            a, b = host(getattr(ours, name)["W"]), getattr(theirs, name)["W"]
            assert (abs(a - b) <= rtol * abs(b) + lost).all(), f"{name} at step {k}"
        a = host(mine["W"]).astype("float64")
        excess = abs(a - expected) - (rtol * (abs(expected) + moved) + param_tol)
        assert (excess <= 0).all(), f"W at step {k}: {excess.max():.3g} beyond the bound"

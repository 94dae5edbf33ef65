"""Optimizer state and softmax probabilities never hold subnormal numbers, on every backend."""

import numpy
import pytest
from conftest import host

from fastbp.optim import AdaGrad, Adam, Momentum, Nesterov, RMSprop

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

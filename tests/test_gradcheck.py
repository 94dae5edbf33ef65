import numpy
import pytest
from conftest import host

from fastbp.gradcheck import gradient_check, numerical_gradient, rel_error
from fastbp.nets import MultiLayerNet


def test_numerical_gradient_of_a_quadratic(backend):
    x = backend.asarray([[1.0, -2.0], [3.0, 0.5]])
    grad = numerical_gradient(lambda v: (v ** 2).sum(), x)
    numpy.testing.assert_allclose(host(grad), 2 * host(x), rtol=1e-8)
    numpy.testing.assert_array_equal(host(x), [[1.0, -2.0], [3.0, 0.5]])  # restored


def test_numerical_gradient_refuses_non_contiguous_arrays(backend):
    x = backend.asarray(numpy.ones((3, 4))).T
    with pytest.raises(ValueError, match="numerical_gradient: x must be C-contiguous"):
        numerical_gradient(lambda v: v.sum(), x)


def test_rel_error_definition():
    assert rel_error(numpy.zeros(3), numpy.zeros(3)) == 0.0
    assert rel_error([3.0, 4.0], [0.0, 0.0]) == 1.0
    assert rel_error([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / numpy.sqrt(2))
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(numpy.zeros(2), numpy.zeros(3))


@pytest.mark.parametrize("key", ["W1", "b2"])
def test_gradient_check_reports_a_wrong_gradient(backend, monkeypatch, key):
    """A backprop gradient twice the true one is off by 1/2 of the larger: the floor (1e-4
    of the net's gradient norm) changes nothing for an array of ordinary size."""
    net = MultiLayerNet(20, [10], 5, weight_init_std=1.0, seed=0, backend=backend)
    rng = numpy.random.default_rng(1)
    x, t = backend.asarray(rng.standard_normal((8, 20))), backend.asarray(rng.integers(0, 5, 8))
    backprop = net.gradient
    monkeypatch.setattr(net, "gradient", lambda *args: {k: 2 * g if k == key else g
                                                        for k, g in backprop(*args).items()})
    errors = gradient_check(net, x, t)
    assert errors[key] == pytest.approx(0.5, rel=1e-4)
    assert max(e for k, e in errors.items() if k != key) < 1e-6


def test_numerical_gradient_restores_x_when_f_raises(backend):
    """An error (or Ctrl-C) inside f must not leave an element perturbed by h."""
    x = backend.asarray(numpy.ones(5))
    calls = []

    def f(w):
        calls.append(1)
        if len(calls) == 4:  # the second element's minus side
            raise KeyboardInterrupt
        return (w ** 2).sum()

    with pytest.raises(KeyboardInterrupt):
        numerical_gradient(f, x)
    numpy.testing.assert_array_equal(host(x), numpy.ones(5))


def test_directional_check_in_float32_is_not_rounding_noise():
    import numpy as np

    from fastbp.gradcheck import directional_check
    from fastbp.nets import MultiLayerNet

    net = MultiLayerNet(20, [10], 5, activation="sigmoid", weight_init_std=1.0, seed=0,
                        dtype="float32")
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((8, 20)), rng.integers(0, 5, 8)
    assert max(directional_check(net, x, t)) < 1e-2


def _float32_and_its_float64_copy(backend, activation="relu"):
    net = MultiLayerNet(20, [10, 10], 5, activation=activation, weight_init_std=1.0, seed=0,
                        backend=backend, dtype="float32")
    copy = MultiLayerNet(20, [10, 10], 5, activation=activation, weight_init_std=1.0, seed=5,
                         backend=backend, dtype="float64")
    for key, value in net.params.items():
        copy.params[key] = value
    rng = numpy.random.default_rng(1)
    x = backend.asarray(rng.standard_normal((8, 20)), dtype="float32")
    return net, copy, x, backend.asarray(rng.integers(0, 5, 8))


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_a_float32_backprop_checks_against_a_float64_copy_to_float32_rounding(backend, activation):
    """Its own central differences are off by 1e-3 or more; the float64 copy's are not."""
    from fastbp.gradcheck import directional_check

    net, copy, x, t = _float32_and_its_float64_copy(backend, activation)
    assert max(gradient_check(net, x, t).values()) > 1e-4  # why the copy is needed
    assert max(gradient_check(net, x, t, numerical_net=copy).values()) < 1e-5
    assert max(directional_check(net, x, t, numerical_net=copy)) < 1e-5
    assert net.params["W1"].dtype == numpy.float32 and copy.params["W1"].dtype == numpy.float64


def test_the_float64_copy_still_finds_a_wrong_float32_gradient(backend, monkeypatch):
    from fastbp.gradcheck import directional_check

    net, copy, x, t = _float32_and_its_float64_copy(backend)
    backprop = net.gradient
    monkeypatch.setattr(net, "gradient", lambda *args: {k: g * 1.001 if k == "W2" else g
                                                        for k, g in backprop(*args).items()})
    errors = gradient_check(net, x, t, numerical_net=copy)
    assert 5e-4 < errors["W2"] < 2e-3 and errors["W1"] < 1e-5
    assert max(directional_check(net, x, t, numerical_net=copy)) > 1e-4

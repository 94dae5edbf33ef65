import numpy
import pytest

from conftest import host
from fastbp.optim import SGD


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


@pytest.mark.parametrize("grads, message", [
    (lambda be: {"W": be.asarray(numpy.ones((2, 3)))}, "same keys"),
    (lambda be: {"W": be.asarray(numpy.ones((2, 3))), "b": be.asarray(numpy.ones(4))},
     r"grads\['b'\] must have shape \(3,\), received \(4,\)"),
])
def test_bad_grads_change_nothing(backend, grads, message):
    params = _params(backend)
    with pytest.raises(ValueError, match=f"SGD.update: .*{message}"):
        SGD(lr=0.1).update(params, grads(backend))
    numpy.testing.assert_array_equal(host(params["W"]), numpy.ones((2, 3)))
    numpy.testing.assert_array_equal(host(params["b"]), numpy.zeros(3))


@pytest.mark.parametrize("lr", [0, -1.0])
def test_learning_rate_must_be_positive(lr):
    with pytest.raises(ValueError, match=f"SGD: lr must be > 0, received {lr}"):
        SGD(lr=lr)

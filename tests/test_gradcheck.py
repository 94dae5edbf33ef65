import numpy
import pytest
from conftest import host

from fastbp.gradcheck import numerical_gradient, rel_error


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

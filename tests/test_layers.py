import warnings

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, host
from fastbp.gradcheck import numerical_gradient, rel_error
from fastbp.layers import (AddLayer, Affine, IdentityWithLoss, MulLayer, ReLU, Sigmoid,
                           SoftmaxWithLoss)


# ------------------------------------------------------- the worked examples
def test_apple_example():
    apple, apple_num, tax = 100, 2, 1.1
    mul_apple, mul_tax = MulLayer(), MulLayer()
    price = mul_tax.forward(mul_apple.forward(apple, apple_num), tax)
    assert price == pytest.approx(220)
    dapple_price, dtax = mul_tax.backward(1)
    dapple, dapple_num = mul_apple.backward(dapple_price)
    assert (dapple, dapple_num, dtax) == pytest.approx((2.2, 110, 200))


def test_apple_orange_example():
    apple, apple_num, orange, orange_num, tax = 100, 2, 150, 3, 1.1
    mul_apple, mul_orange, add, mul_tax = MulLayer(), MulLayer(), AddLayer(), MulLayer()
    apple_price = mul_apple.forward(apple, apple_num)
    orange_price = mul_orange.forward(orange, orange_num)
    price = mul_tax.forward(add.forward(apple_price, orange_price), tax)
    assert price == pytest.approx(715)
    dall, dtax = mul_tax.backward(1)
    dapple_price, dorange_price = add.backward(dall)
    dorange, dorange_num = mul_orange.backward(dorange_price)
    dapple, dapple_num = mul_apple.backward(dapple_price)
    assert (dapple_num, dapple, dorange, dorange_num, dtax) == pytest.approx((110, 2.2, 3.3, 165, 650))


def test_one_point_regression_step(backend):
    xp = backend.xp
    affine = Affine(xp.array([[0.5]]), xp.array([0.1]), backend)
    loss_layer = IdentityWithLoss(backend)
    loss = loss_layer.forward(affine.forward(xp.array([[2.0]])), xp.array([[3.0]]))
    assert float(loss) == pytest.approx(1.805)
    affine.backward(loss_layer.backward())
    assert float(affine.dW[0, 0]) == pytest.approx(-3.8)
    assert float(affine.db[0]) == pytest.approx(-1.9)
    backend.sgd_update(affine.W, affine.dW, 0.1)
    backend.sgd_update(affine.b, affine.db, 0.1)
    assert (float(affine.W[0, 0]), float(affine.b[0])) == pytest.approx((0.88, 0.29))


# ------------------------------------------- backward against central differences
def _check_backward(forward, backward, x, dout, atol=1e-7):
    """backward(dout) must equal the gradient of sum(forward(x) * dout)."""
    analytic = host(backward(dout))
    numeric = host(numerical_gradient(lambda _: float((forward(x) * dout).sum()), x))
    assert rel_error(analytic, numeric) < atol or numpy.abs(analytic - numeric).max() < atol


shapes = st.tuples(st.integers(1, 6), st.integers(1, 7))


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_relu_backward_matches_numerical(backend, shape, seed):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x[numpy.abs(x) < 1e-3] = 0.5  # keep clear of the kink
    x, dout = backend.asarray(x), backend.asarray(rng.standard_normal(shape))
    layer = ReLU(backend)
    layer.forward(x)
    _check_backward(layer.forward, layer.backward, x, dout)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_sigmoid_backward_matches_numerical(backend, shape, seed):
    rng = numpy.random.default_rng(seed)
    x, dout = (backend.asarray(rng.standard_normal(shape) * 3) for _ in range(2))
    layer = Sigmoid(backend)
    layer.forward(x)
    _check_backward(layer.forward, layer.backward, x, dout)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 5), d_in=st.integers(1, 6), d_out=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_affine_backward_matches_numerical(backend, n, d_in, d_out, seed):
    rng = numpy.random.default_rng(seed)
    x, W, b, dout = (backend.asarray(rng.standard_normal(s))
                     for s in ((n, d_in), (d_in, d_out), (d_out,), (n, d_out)))
    layer = Affine(W, b, backend)
    layer.forward(x)
    dx = layer.backward(dout)
    for array, analytic in ((x, dx), (W, layer.dW), (b, layer.db)):
        numeric = numerical_gradient(lambda _: float((layer.forward(x) * dout).sum()), array)
        assert rel_error(analytic, numeric) < 1e-7


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 6), seed=st.integers(0, 2**16),
       one_hot=st.booleans())
def test_softmax_with_loss_backward_matches_numerical(backend, n, c, seed, one_hot):
    rng = numpy.random.default_rng(seed)
    x = backend.asarray(rng.standard_normal((n, c)) * 3)
    labels = rng.integers(0, c, n)
    t = backend.asarray(numpy.eye(c)[labels] if one_hot else labels)
    layer = SoftmaxWithLoss(backend)
    layer.forward(x, t)
    numeric = numerical_gradient(lambda _: layer.forward(x, t), x)
    layer.forward(x, t)
    assert rel_error(layer.backward(), numeric) < 1e-7


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_identity_with_loss_backward_matches_numerical(backend, n, c, seed):
    rng = numpy.random.default_rng(seed)
    x, t = (backend.asarray(rng.standard_normal((n, c))) for _ in range(2))
    layer = IdentityWithLoss(backend)
    numeric = numerical_gradient(lambda _: layer.forward(x, t), x)
    layer.forward(x, t)
    assert rel_error(layer.backward(), numeric) < 1e-7


# ------------------------------------------------------------ layer contracts
def test_relu_backward_leaves_dout_alone(backend):
    layer = ReLU(backend)
    layer.forward(backend.asarray([[-1.0, 2.0], [3.0, -4.0]]))
    dout = backend.asarray([[5.0, 6.0], [7.0, 8.0]])
    dx = layer.backward(dout)
    numpy.testing.assert_array_equal(host(dx), [[0, 6], [7, 0]])
    numpy.testing.assert_array_equal(host(dout), [[5, 6], [7, 8]])


def test_sigmoid_is_overflow_safe(backend, dtype):
    x = backend.asarray([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = host(Sigmoid(backend).forward(x))
    assert out.dtype == numpy.dtype(dtype)
    assert out[0] == 0 and out[2] == 0.5 and out[-1] == 1
    assert numpy.isfinite(out).all()


def test_softmax_loss_handles_huge_logits(backend, dtype):
    x = backend.asarray([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]], dtype=dtype)
    layer = SoftmaxWithLoss(backend)
    loss = layer.forward(x, backend.asarray([1, 1]))
    assert float(loss) == pytest.approx(500.0)  # (1000 + 0) / 2
    dx = host(layer.backward())
    assert numpy.isfinite(dx).all() and dx.dtype == numpy.dtype(dtype)
    numpy.testing.assert_allclose(dx, [[0.5, -0.5, 0], [0, 0, 0]], atol=1e-6)


def test_softmax_one_hot_equals_indices(backend, dtype):
    rng = numpy.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((7, 4)), dtype=dtype)
    labels = rng.integers(0, 4, 7)
    by_index, by_one_hot = SoftmaxWithLoss(backend), SoftmaxWithLoss(backend)
    loss_i = by_index.forward(x, backend.asarray(labels))
    loss_o = by_one_hot.forward(x, backend.asarray(numpy.eye(4)[labels], dtype=dtype))
    assert float(loss_i) == pytest.approx(float(loss_o), rel=1e-6)
    assert_close(by_index.backward(), by_one_hot.backward(), dtype)


def test_affine_flattens_image_batches(backend):
    rng = numpy.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((2, 1, 3, 4)))
    layer = Affine(backend.asarray(rng.standard_normal((12, 5))), backend.asarray(numpy.zeros(5)), backend)
    out = layer.forward(x)
    assert out.shape == (2, 5)
    assert layer.backward(backend.asarray(numpy.ones((2, 5)))).shape == (2, 1, 3, 4)


def test_affine_rejects_wrong_feature_count(backend):
    layer = Affine(backend.asarray(numpy.ones((3, 2))), backend.asarray(numpy.zeros(2)), backend)
    with pytest.raises(ValueError, match=r"Affine.forward: expected inputs with 3 features.*\(4, 5\)"):
        layer.forward(backend.asarray(numpy.ones((4, 5))))


def test_identity_loss_accepts_class_indices(backend):
    layer = IdentityWithLoss(backend)
    loss = layer.forward(backend.asarray([[1.0, 0.0], [0.0, 0.0]]), backend.asarray([0, 1]))
    assert float(loss) == pytest.approx(0.25)  # only the second row misses, by 1

import math
import re
import warnings

import numpy
import pytest
from conftest import assert_close, host
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastbp.gradcheck import numerical_gradient, rel_error
from fastbp.layers import (
    AddLayer,
    Affine,
    BatchNorm,
    Dropout,
    IdentityWithLoss,
    MulLayer,
    ReLU,
    Sigmoid,
    SoftmaxWithLoss,
)


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
    analytic = layer.backward()
    # central differences carry an absolute error of about eps * loss / h: tiny gradients
    # (a confident, correct prediction) are compared absolutely
    assert rel_error(analytic, numeric) < 1e-7 or abs(host(analytic) - host(numeric)).max() < 1e-10


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_identity_with_loss_backward_matches_numerical(backend, n, c, seed):
    rng = numpy.random.default_rng(seed)
    x, t = (backend.asarray(rng.standard_normal((n, c))) for _ in range(2))
    layer = IdentityWithLoss(backend)
    numeric = numerical_gradient(lambda _: layer.forward(x, t), x)
    layer.forward(x, t)
    analytic = layer.backward()
    # central differences carry an absolute error of about eps * loss / h: tiny gradients
    # (a confident, correct prediction) are compared absolutely
    assert rel_error(analytic, numeric) < 1e-7 or abs(host(analytic) - host(numeric)).max() < 1e-10


@pytest.mark.parametrize("make", [SoftmaxWithLoss, IdentityWithLoss])
def test_loss_layers_backward_scales_with_dout(backend, make):
    """``backward(dout)`` is the chain rule's d(dout * loss)/dx, as in the book."""
    rng = numpy.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((4, 3)))
    t = backend.asarray(rng.integers(0, 3, 4) if make is SoftmaxWithLoss
                        else rng.standard_normal((4, 3)))
    layer = make(backend)
    layer.forward(x, t)
    once = host(layer.backward()).copy()
    numpy.testing.assert_allclose(host(layer.backward(2.5)), 2.5 * once, rtol=1e-15)


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


@pytest.mark.parametrize("layer", [SoftmaxWithLoss, IdentityWithLoss])
@pytest.mark.parametrize("x, t, message", [
    (numpy.zeros((1000, 10)), numpy.full(1000, 10**9), r"labels must lie in \[0, 10\), received "
                                                       r"values in \[1000000000, 1000000000\]"),
    (numpy.zeros((2, 3)), numpy.array([0, -1]), r"labels must lie in \[0, 3\)"),
    (numpy.zeros((3, 3)), numpy.array([0, 1]), "x has 3 rows but t has 2 labels"),
    (numpy.zeros((2, 3)), numpy.array([0.0, 1.0]), "class-index labels must be integers"),
    (numpy.zeros((2, 3)), numpy.zeros((3, 2)), r"expected t of shape .*\(2, 3\).*received shape "
                                               r"\(3, 2\)"),
])
def test_loss_layers_refuse_targets_that_do_not_fit(backend, layer, x, t, message):
    """Checked before any kernel reads them: an index past the classes is never read."""
    name = layer.__name__
    with pytest.raises(ValueError, match=rf"{name}.forward: {message}"):
        layer(backend).forward(backend.asarray(x), backend.asarray(t))


@pytest.mark.parametrize("W, b", [((3, 2), (4,)), ((3, 2), (1, 2)), ((6,), (6,))])
def test_affine_refuses_weights_and_bias_that_do_not_fit(backend, W, b):
    message = ("Affine: expected W of shape (inputs, outputs) and b of shape (outputs,), "
               f"received W {W} and b {b}")
    with pytest.raises(ValueError, match=re.escape(message)):
        Affine(backend.asarray(numpy.ones(W)), backend.asarray(numpy.zeros(b)), backend)


@pytest.mark.parametrize("make", [
    lambda be: MulLayer(), lambda be: ReLU(be), lambda be: Sigmoid(be),
    lambda be: Affine(be.asarray(numpy.ones((3, 2))), be.asarray(numpy.zeros(2)), be),
    lambda be: SoftmaxWithLoss(be), lambda be: IdentityWithLoss(be),
    lambda be: BatchNorm(be.asarray(numpy.ones(2)), be.asarray(numpy.zeros(2)), backend=be),
], ids=["MulLayer", "ReLU", "Sigmoid", "Affine", "SoftmaxWithLoss", "IdentityWithLoss", "BatchNorm"])
def test_backward_before_forward_says_so(backend, make):
    layer = make(backend)
    with pytest.raises(RuntimeError, match=rf"{type(layer).__name__}.backward: call forward first"):
        layer.backward(backend.asarray(numpy.ones((4, 2))))


def test_affine_takes_lists(backend):
    out = Affine([[1.0, 2.0], [3.0, 4.0]], [0.5, -0.5], backend).forward([[1.0, 1.0]])
    numpy.testing.assert_array_equal(host(out), [[4.5, 5.5]])


def test_affine_backward_refuses_a_dout_that_is_not_its_output(backend):
    layer = Affine(backend.asarray(numpy.ones((3, 2))), backend.asarray(numpy.zeros(2)), backend)
    layer.forward(backend.asarray(numpy.ones((4, 3))))
    with pytest.raises(ValueError, match=re.escape("Affine.backward: expected dout of shape (4, 2) "
                                                   "(the last forward's output), received (4, 3)")):
        layer.backward(backend.asarray(numpy.ones((4, 3))))


def test_layers_take_nested_lists(backend):
    numpy.testing.assert_array_equal(host(ReLU(backend).forward([[-1.0, 2.0]])), [[0.0, 2.0]])
    assert host(Sigmoid(backend).forward([[0.0]])).item() == 0.5


def test_softmax_loss_wants_a_batch_of_score_rows(backend):
    with pytest.raises(ValueError, match=r"SoftmaxWithLoss.forward: expected scores x of shape "
                                         r"\(N, C\) with N >= 1, received shape \(3,\)"):
        SoftmaxWithLoss(backend).forward(backend.asarray(numpy.zeros(3)), backend.asarray(1))


def test_identity_loss_takes_outputs_of_any_shape_and_refuses_other_targets(backend):
    layer = IdentityWithLoss(backend)
    y, t = numpy.array([1.0, 2.0]), numpy.array([0.0, 0.0])
    assert float(layer.forward(backend.asarray(y), backend.asarray(t))) == pytest.approx(1.25)
    with pytest.raises(ValueError, match=r"IdentityWithLoss.forward: expected t of shape \(2,\), "
                                         r"received shape \(3,\)"):
        layer.forward(backend.asarray(y), backend.asarray(numpy.zeros(3)))


def test_identity_loss_accepts_class_indices(backend):
    layer = IdentityWithLoss(backend)
    loss = layer.forward(backend.asarray([[1.0, 0.0], [0.0, 0.0]]), backend.asarray([0, 1]))
    assert float(loss) == pytest.approx(0.25)  # only the second row misses, by 1


# ------------------------------------------------------------------- Dropout
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.9])
def test_dropout_keeps_the_expected_mean(backend, dtype, ratio):
    """Inverted scaling: kept units become x / (1 - ratio), so the mean stays x."""
    x = backend.asarray(numpy.full((400, 250), 2.0), dtype=dtype)
    out = host(Dropout(ratio, backend, seed=0).forward(x))
    assert out.dtype == numpy.dtype(dtype)
    kept = out != 0
    numpy.testing.assert_allclose(out[kept], 2.0 / (1 - ratio), rtol=1e-6)
    sigma = math.sqrt(ratio * (1 - ratio) / out.size)  # of the fraction dropped
    assert abs((1 - kept.mean()) - ratio) < 5 * sigma + 1e-12
    assert abs(out.mean() - 2.0) < 5 * 2.0 * sigma / (1 - ratio) + 1e-12


def test_dropout_inference_is_the_identity(backend):
    x = backend.asarray(numpy.random.default_rng(0).standard_normal((5, 4)))
    layer = Dropout(0.5, backend, seed=0)
    numpy.testing.assert_array_equal(host(layer.forward(x, train_flg=False)), host(x))
    dout = backend.asarray(numpy.ones((5, 4)))
    numpy.testing.assert_array_equal(host(layer.backward(dout)), numpy.ones((5, 4)))


def test_dropout_masks_are_seeded_and_can_be_fixed(backend):
    x = backend.asarray(numpy.ones((20, 30)))
    a, b = Dropout(0.5, backend, seed=3), Dropout(0.5, backend, seed=3)
    first = host(a.forward(x))
    numpy.testing.assert_array_equal(first, host(b.forward(x)))
    assert not numpy.array_equal(first, host(a.forward(x)))  # a new mask each pass
    a.fixed_mask = True
    fixed = host(a.forward(x))
    numpy.testing.assert_array_equal(fixed, host(a.forward(x)))
    assert host(a.forward(backend.asarray(numpy.ones((2, 30))))).shape == (2, 30)  # new shape


@settings(max_examples=15, deadline=None)
@given(shape=shapes, ratio=st.floats(0, 0.9), seed=st.integers(0, 2**16))
def test_dropout_backward_matches_numerical(backend, shape, ratio, seed):
    rng = numpy.random.default_rng(seed)
    x, dout = (backend.asarray(rng.standard_normal(shape)) for _ in range(2))
    layer = Dropout(ratio, backend, seed=seed)
    layer.forward(x)
    layer.fixed_mask = True
    _check_backward(layer.forward, layer.backward, x, dout)


@pytest.mark.parametrize("ratio", [1.0, -0.1, "half", None])
def test_dropout_ratio_must_be_a_fraction(ratio):
    with pytest.raises(ValueError, match=r"Dropout: dropout_ratio must be (a finite number )?in "
                                         r"\[0, 1\), received"):
        Dropout(ratio)


# ----------------------------------------------------------------- BatchNorm
def _batchnorm(backend, d, dtype="float64", seed=0, momentum=0.9):
    rng = numpy.random.default_rng(seed)
    gamma, beta = (backend.asarray(rng.standard_normal(d), dtype=dtype) for _ in range(2))
    return BatchNorm(gamma, beta, momentum=momentum, backend=backend)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_batchnorm_training_normalises_and_updates_running_stats(backend, n, d, seed):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * 4 + 3
    layer = _batchnorm(backend, d, seed=seed, momentum=0.8)
    out = host(layer.forward(backend.asarray(x)))
    gamma, beta, var = host(layer.gamma), host(layer.beta), x.var(axis=0)
    numpy.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-10)
    expected_std = numpy.abs(gamma) * numpy.sqrt(var / (var + 1e-6))
    numpy.testing.assert_allclose(out.std(axis=0), expected_std, rtol=1e-8, atol=1e-10)
    numpy.testing.assert_allclose(host(layer.running_mean), 0.2 * x.mean(axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(host(layer.running_var), 0.8 + 0.2 * var, rtol=1e-12)


def test_batchnorm_inference_uses_the_running_stats(backend, dtype):
    rng = numpy.random.default_rng(0)
    layer = _batchnorm(backend, 3, dtype)
    mean, var = numpy.array([1.0, -2.0, 0.5]), numpy.array([4.0, 0.25, 1.0])
    layer.running_mean[...] = backend.asarray(mean)
    layer.running_var[...] = backend.asarray(var)
    x = rng.standard_normal((5, 3))
    out = host(layer.forward(backend.asarray(x, dtype=dtype), train_flg=False))
    expected = host(layer.gamma) * (x - mean) / numpy.sqrt(var + 1e-6) + host(layer.beta)
    assert out.dtype == numpy.dtype(dtype)
    assert_close(out, expected, dtype, "inference")
    assert_close(layer.running_mean, mean, dtype, "running_mean unchanged")
    assert_close(layer.running_var, var, dtype, "running_var unchanged")


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 6), d=st.integers(1, 5), seed=st.integers(0, 2**16),
       train_flg=st.booleans())
def test_batchnorm_backward_matches_numerical(backend, n, d, seed, train_flg):
    rng = numpy.random.default_rng(seed)
    x, dout = rng.standard_normal((n, d)) * 2, rng.standard_normal((n, d))
    # a feature of small batch variance bends sharply: keep h well below its spread
    assume(x.var(axis=0).min() > 1e-2)
    x, dout = backend.asarray(x), backend.asarray(dout)
    layer = _batchnorm(backend, d, seed=seed, momentum=1.0)  # running stats stay put
    layer.running_var[...] = backend.asarray(rng.random(d) + 0.5)

    def forward(_):
        return float((layer.forward(x, train_flg) * dout).sum())

    layer.forward(x, train_flg)
    dx = layer.backward(dout)
    for array, analytic in ((x, dx), (layer.gamma, layer.dgamma), (layer.beta, layer.dbeta)):
        numeric = numerical_gradient(forward, array, h=1e-5)
        assert (rel_error(analytic, numeric) < 1e-6
                or numpy.abs(host(analytic) - host(numeric)).max() < 1e-8)


def test_batchnorm_flattens_image_batches(backend):
    layer = _batchnorm(backend, 12)
    x = backend.asarray(numpy.random.default_rng(0).standard_normal((4, 3, 2, 2)))
    assert layer.forward(x).shape == (4, 3, 2, 2)
    assert layer.backward(backend.asarray(numpy.ones((4, 3, 2, 2)))).shape == (4, 3, 2, 2)
    assert layer.dgamma.shape == (12,)


def test_batchnorm_keeps_float32(backend):
    layer = _batchnorm(backend, 4, "float32")
    out = layer.forward(backend.asarray(numpy.ones((3, 4)), dtype="float32"))
    layer.backward(out)
    assert all(a.dtype == numpy.float32 for a in (out, layer.running_mean, layer.running_var,
                                                   layer.dgamma, layer.dbeta))


@pytest.mark.parametrize("kwargs, message", [
    ({"momentum": 1.5}, r"BatchNorm: momentum must be in \[0, 1\], received 1.5"),
    ({"eps": 0}, "BatchNorm: eps must be > 0, received 0"),
    ({"beta": numpy.zeros(4)}, r"must be 1-D of one shape, received \(3,\), \(4,\), \(3,\), \(3,\)"),
    ({"running_var": numpy.ones((3, 1))}, r"received \(3,\), \(3,\), \(3,\), \(3, 1\)"),
])
def test_batchnorm_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchNorm(**{"gamma": numpy.ones(3), "beta": numpy.zeros(3), **kwargs})


def test_batchnorm_rejects_wrong_feature_count(backend):
    with pytest.raises(ValueError, match=r"BatchNorm.forward: expected inputs with 3 features, "
                                         r"received shape \(4, 5\)"):
        _batchnorm(backend, 3).forward(backend.asarray(numpy.ones((4, 5))))


def test_backward_takes_python_numbers_and_lists_on_every_backend(backend, dtype):
    """As forward does: a list or Python number dout works the same on every backend and keeps
    the dtype of the forward pass (the numba backend raised AttributeError)."""
    x = numpy.array([[0.5, -1.0, 2.0]], dtype=dtype)
    for layer in (ReLU(backend), Sigmoid(backend)):
        layer.forward(backend.asarray(x))
        for dout in (1.0, [[1.0, 2.0, 3.0]]):
            dx = layer.backward(dout)
            assert dx.shape == x.shape and dx.dtype == numpy.dtype(dtype)
    affine = Affine(backend.asarray(numpy.ones((3, 2), dtype)), backend.asarray(numpy.zeros(2, dtype)),
                    backend)
    affine.forward(backend.asarray(x))
    dx = affine.backward([[1.0, 1.0]])
    assert dx.shape == x.shape and dx.dtype == numpy.dtype(dtype)
    numpy.testing.assert_allclose(host(dx), numpy.full((1, 3), 2.0))


def test_dropout_backward_after_an_inference_forward_is_the_identity(backend):
    """As BatchNorm's, its backward follows its last forward's mode (PyTorch's eval dropout)."""
    drop = Dropout(0.5, backend, seed=0)
    x = backend.asarray(numpy.ones((4, 6)))
    drop.forward(x, True)
    drop.forward(x, False)
    numpy.testing.assert_array_equal(host(drop.backward(backend.asarray(numpy.ones((4, 6))))),
                                     numpy.ones((4, 6)))
    drop.forward(x, True)
    assert (host(drop.backward(backend.asarray(numpy.ones((4, 6))))) != 1).any()


@pytest.mark.parametrize("make", ["ReLU", "Sigmoid", "Dropout", "BatchNorm"])
def test_backward_refuses_a_dout_of_another_shape_than_the_forward_output(backend, make):
    """The compiled Sigmoid read past a larger dout's end, and broadcast or shrank others."""
    layer = {"ReLU": lambda: ReLU(backend), "Sigmoid": lambda: Sigmoid(backend),
             "Dropout": lambda: Dropout(0.5, backend, seed=0),
             "BatchNorm": lambda: _batchnorm(backend, 5)}[make]()
    layer.forward(backend.asarray(numpy.random.default_rng(0).standard_normal((3, 5))))
    for shape in ((50, 5), (2, 5), (3, 4), (5,)):
        with pytest.raises(ValueError, match=rf"{make}.backward: expected dout of shape \(3, 5\) "
                                             rf"\(the last forward's output\), received "
                                             rf"{re.escape(str(shape))}"):
            layer.backward(backend.asarray(numpy.ones(shape)))
    assert layer.backward(backend.asarray(numpy.ones((3, 5)))).shape == (3, 5)


def test_relu_of_another_input_dtype_backpropagates_as_the_reference(backend, reference):
    for x_dtype in ("float16", "int64"):
        outs = []
        for be in (reference, backend):
            relu = ReLU(be)
            relu.forward(be.asarray(numpy.array([[-1, 2, 3]], dtype=x_dtype)))
            outs.append(host(relu.backward(be.asarray(numpy.ones((1, 3), "float32")))))
        assert outs[1].dtype == outs[0].dtype
        numpy.testing.assert_array_equal(outs[1], outs[0])


def test_identity_loss_keeps_float32_and_refuses_complex_targets(backend):
    x = backend.asarray(numpy.ones((2, 3), "float32"))
    layer = IdentityWithLoss(backend)
    for t in (numpy.zeros((2, 3)), numpy.zeros((2, 3), int), [[0.0] * 3] * 2):
        loss = layer.forward(x, backend.asarray(t) if not isinstance(t, list) else t)
        assert loss.dtype == numpy.float32 and layer.backward().dtype == numpy.float32
    with pytest.raises(ValueError, match="IdentityWithLoss.forward: expected real numbers in t, "
                                         "received dtype complex128"):
        layer.forward(x, backend.asarray(numpy.zeros((2, 3), complex)))


def test_a_loss_backward_scaled_by_a_numpy_number_keeps_float32(backend):
    layer = SoftmaxWithLoss(backend)
    layer.forward(backend.asarray(numpy.ones((2, 3), "float32")), backend.asarray([0, 1]))
    assert layer.backward(numpy.float64(2.0)).dtype == numpy.float32


def test_an_infinite_first_row_loss_sums_to_inf_not_nan(backend):
    """The compiled sums began from values[0] - values[0], NaN when that is inf."""
    x = backend.asarray(numpy.array([[-numpy.inf, 0.0, 0.0], [0.0, 1.0, 2.0]]))
    with numpy.errstate(all="ignore"):
        loss = float(SoftmaxWithLoss(backend).forward(x, backend.asarray([0, 1])))
    assert loss == numpy.inf


def test_big_endian_labels_work_as_native_ones(backend):
    x = backend.asarray(numpy.random.default_rng(0).standard_normal((4, 3)))
    t = numpy.array([0, 2, 1, 2])
    losses = [float(SoftmaxWithLoss(backend).forward(x, backend.asarray(t.astype(order))))
              for order in ("<i8", ">i8")]
    assert losses[0] == losses[1]


def test_affine_names_an_empty_batch_and_batchnorm_takes_lists(backend):
    affine = Affine(backend.asarray(numpy.ones((3, 2))), backend.asarray(numpy.zeros(2)), backend)
    with pytest.raises(ValueError, match=r"Affine.forward: expected a batch of N >= 1 rows, "
                                         r"received shape \(0, 3\)"):
        affine.forward(backend.asarray(numpy.ones((0, 3))))
    layer = BatchNorm([1.0, 1.0], [0.0, 0.0], backend=backend)
    assert layer.forward(backend.asarray(numpy.array([[1.0, 2.0], [3.0, 5.0]]))).shape == (2, 2)


def test_dropout_of_integer_inputs_scales_them_as_numbers(backend):
    drop = Dropout(0.5, backend, seed=0)
    out = host(drop.forward(backend.asarray(numpy.full((50, 4), 3))))
    assert out.dtype == numpy.float64 and set(numpy.unique(out)) <= {0.0, 6.0}

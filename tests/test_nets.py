import numpy
import pytest

import fastbp
from conftest import BACKENDS, assert_close, host
from fastbp.data import make_toy
from fastbp.gradcheck import directional_check, gradient_check
from fastbp.nets import MultiLayerNet, TwoLayerNet
from fastbp.optim import SGD


def _batch(n=8, d=20, c=5, seed=1):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


def _snapshot(net):
    return {k: host(v).copy() for k, v in net.params.items()}


def test_params_have_textbook_names_and_shapes(backend, dtype):
    net = TwoLayerNet(784, 50, 10, seed=0, backend=backend, dtype=dtype)
    assert {k: tuple(v.shape) for k, v in net.params.items()} == {
        "W1": (784, 50), "b1": (50,), "W2": (50, 10), "b2": (10,)}
    assert all(isinstance(v, backend.xp.ndarray) and v.dtype == numpy.dtype(dtype)
               for v in net.params.values())
    assert net.backend is backend


def test_net_uses_the_current_backend(backend):
    with fastbp.use_backend(backend.name):
        assert TwoLayerNet(4, 3, 2).backend is backend


def test_same_seed_same_net_on_every_backend(backend):
    ours = TwoLayerNet(10, 6, 3, seed=7, backend=backend)
    ref = TwoLayerNet(10, 6, 3, seed=7, backend="numpy")
    for key in ref.params:
        numpy.testing.assert_array_equal(host(ours.params[key]), ref.params[key])


def test_gradient_check_passes(backend):
    net = TwoLayerNet(20, 10, 5, weight_init_std=1.0, seed=0, backend=backend)
    x, t = _batch()
    errors = gradient_check(net, x, t)
    assert set(errors) == {"W1", "b1", "W2", "b2"}
    assert max(errors.values()) < 1e-6, errors
    assert max(directional_check(net, x, t)) < 1e-6


def test_gradient_check_catches_a_wrong_backward(monkeypatch):
    net = TwoLayerNet(20, 10, 5, weight_init_std=1.0, seed=0)
    monkeypatch.setattr(net.layers["Activation1"], "backward", lambda dout: dout)  # ignores the mask
    errors = gradient_check(net, *_batch())
    assert errors["W1"] > 1e-2 and errors["W2"] < 1e-6


@pytest.mark.parametrize("one_hot", [False, True])
def test_backends_agree_with_the_reference(backend, dtype, one_hot):
    x, t = _batch(16, 12, 4)
    if one_hot:
        t = numpy.eye(4)[t]
    ours = TwoLayerNet(12, 9, 4, weight_init_std=0.5, seed=3, backend=backend, dtype=dtype)
    ref = TwoLayerNet(12, 9, 4, weight_init_std=0.5, seed=3, backend="numpy", dtype=dtype)
    ours_x, ours_t = backend.asarray(x), backend.asarray(t)
    assert_close(ours.loss(ours_x, ours_t), ref.loss(x, t), dtype, "loss")
    grads, ref_grads = ours.gradient(ours_x, ours_t), ref.gradient(x, t)
    for key in ref_grads:
        assert grads[key].dtype == numpy.dtype(dtype)
        assert_close(grads[key], ref_grads[key], dtype, key)
    assert ours.accuracy(ours_x, ours_t) == ref.accuracy(x, t)


def test_train_step_equals_gradient_then_sgd(backend, dtype):
    x, t = (backend.asarray(a) for a in _batch())
    stepped = TwoLayerNet(20, 10, 5, seed=0, backend=backend, dtype=dtype)
    manual = TwoLayerNet(20, 10, 5, seed=0, backend=backend, dtype=dtype)
    loss = stepped.train_step(x, t, SGD(lr=0.5))
    expected_loss = manual.loss(x, t)
    SGD(lr=0.5).update(manual.params, manual.gradient(x, t))
    assert_close(loss, expected_loss, dtype, "loss")
    for key in manual.params:
        assert stepped.params[key].dtype == numpy.dtype(dtype)
        assert_close(stepped.params[key], manual.params[key], dtype, key)


def test_train_step_changes_the_layers_too(backend):
    """params and layers share arrays, so an update reaches predict."""
    x, t = (backend.asarray(a) for a in _batch())
    net = TwoLayerNet(20, 10, 5, seed=0, backend=backend)
    before = host(net.predict(x)).copy()
    net.train_step(x, t, SGD(lr=0.5))
    assert not numpy.allclose(host(net.predict(x)), before)


def test_toy_classification_reaches_085(backend):
    x, t = make_toy(200, seed=0)
    x, t = backend.asarray(x), backend.asarray(t)
    net = TwoLayerNet(2, 8, 2, weight_init_std=0.5, seed=0, backend=backend)
    opt = SGD(lr=0.1)
    first = float(net.loss(x, t))
    for _ in range(1000):
        net.train_step(x, t, opt)
    assert float(net.loss(x, t)) < first
    assert net.accuracy(x, t) >= 0.85


BAD_INPUTS = [
    (numpy.ones((4, 19)), numpy.zeros(4, int), r"expected x of shape \(N, 20\), received shape \(4, 19\)"),
    (numpy.ones((4, 20)), numpy.zeros(3, int), "x has 4 rows but t has 3 labels"),
    (numpy.ones((4, 20)), numpy.array([0, 1, 5, 2]), r"labels must lie in \[0, 5\), received values in \[0, 5\]"),
    (numpy.ones((4, 20)), numpy.array([0, -1, 2, 2]), r"\[0, 5\), received values in \[-1, 2\]"),
    (numpy.ones((4, 20)), numpy.zeros(4), "labels must be integers"),
    (numpy.ones((4, 20)), numpy.zeros((4, 4)), r"expected t of shape \(4,\) class indices or \(4, 5\) one-hot"),
    (numpy.ones(20), numpy.zeros(1, int), r"received shape \(20,\)"),
]


@pytest.mark.parametrize("x, t, message", BAD_INPUTS)
@pytest.mark.parametrize("method", ["train_step", "gradient", "loss", "accuracy"])
def test_bad_input_is_refused_before_anything_changes(backend, x, t, message, method):
    net = TwoLayerNet(20, 10, 5, seed=0, backend=backend)
    before = _snapshot(net)
    args = (backend.asarray(x), backend.asarray(t)) + ((SGD(0.1),) if method == "train_step" else ())
    with pytest.raises(ValueError, match=f"TwoLayerNet.{method}: .*{message}"):
        getattr(net, method)(*args)
    for key, value in before.items():
        numpy.testing.assert_array_equal(host(net.params[key]), value)


def test_float64_inputs_do_not_promote_a_float32_net(backend):
    net = TwoLayerNet(20, 10, 5, seed=0, backend=backend, dtype="float32")
    x, t = _batch()
    assert net.predict(backend.asarray(x)).dtype == numpy.float32
    loss = net.train_step(backend.asarray(x), backend.asarray(t), SGD(0.1))
    assert loss.dtype == numpy.float32
    assert all(p.dtype == numpy.float32 for p in net.params.values())


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "float16"}, r"dtype must be one of \['float64', 'float32'\], received 'float16'"),
    ({"dtype": "bogus"}, "received 'bogus'"),
    ({"activation": "tanh"}, "activation must be one of"),
    ({"hidden_size_list": [0]}, "layer sizes must be positive integers"),
])
def test_bad_constructor_arguments(kwargs, message):
    args = {"input_size": 4, "hidden_size_list": [3], "output_size": 2, **kwargs}
    with pytest.raises(ValueError, match=f"MultiLayerNet: .*{message}"):
        MultiLayerNet(**args)


def test_unknown_backend_argument():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        TwoLayerNet(4, 3, 2, backend="tpu")


@pytest.mark.skipif("cupy" in BACKENDS, reason="checks host-array handling on CPU-only machines")
def test_gpu_arrays_are_refused_by_host_backends():
    class FakeGpuArray:
        __cuda_array_interface__ = {}

    with pytest.raises(TypeError, match="fastbp.to_numpy"):
        TwoLayerNet(4, 3, 2).predict(FakeGpuArray())

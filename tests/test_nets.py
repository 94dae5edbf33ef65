import copy
import pickle

import numpy
import pytest
from conftest import BACKENDS, assert_close, host

import fastbp
from fastbp.data import make_toy
from fastbp.gradcheck import directional_check, gradient_check, rel_error
from fastbp.nets import MultiLayerNet, TwoLayerNet
from fastbp.optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop
from fastbp.train import Trainer, load_params, save_params


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


def test_same_seed_same_net_on_every_backend(accelerated):
    ours = TwoLayerNet(10, 6, 3, seed=7, backend=accelerated)
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


def test_gradient_check_of_a_batchnorm_net_passes_and_leaves_its_statistics(backend):
    """The biases a BatchNorm cancels (true gradient 0) pass, judged by the net's scale."""
    net = MultiLayerNet(20, [10, 10], 5, seed=0, use_batchnorm=True, backend=backend)
    x, t = (backend.asarray(a) for a in _batch(16, 20, 5))
    before = {key: host(value).copy() for key, value in net.buffers.items()}
    errors = gradient_check(net, x, t)
    assert max(errors.values()) < 1e-6, errors
    for key, value in before.items():
        numpy.testing.assert_array_equal(host(net.buffers[key]), value)


def test_gradient_check_catches_a_wrong_backward(monkeypatch):
    net = TwoLayerNet(20, 10, 5, weight_init_std=1.0, seed=0)
    monkeypatch.setattr(net.backend, "activation_backward_bias",  # ignores the ReLU mask
                        lambda d, a, activation: (d, d.sum(axis=0)))
    errors = gradient_check(net, *_batch())
    assert errors["W1"] > 1e-2 and errors["W2"] < 1e-6


@pytest.mark.parametrize("one_hot", [False, True])
def test_backends_agree_with_the_reference(accelerated, dtype, one_hot):
    x, t = _batch(16, 12, 4)
    if one_hot:
        t = numpy.eye(4)[t]
    ours = TwoLayerNet(12, 9, 4, weight_init_std=0.5, seed=3, backend=accelerated, dtype=dtype)
    ref = TwoLayerNet(12, 9, 4, weight_init_std=0.5, seed=3, backend="numpy", dtype=dtype)
    ours_x, ours_t = accelerated.asarray(x), accelerated.asarray(t)
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
    (numpy.ones((4, 19)), numpy.zeros(4, int), r"expected x of shape \(N, 20\) with N >= 1, received shape \(4, 19\)"),
    (numpy.ones((4, 20)), numpy.zeros(3, int), "x has 4 rows but t has 3 labels"),
    (numpy.ones((4, 20)), numpy.array([0, 1, 5, 2]), r"labels must lie in \[0, 5\), received values in \[0, 5\]"),
    (numpy.ones((4, 20)), numpy.array([0, -1, 2, 2]), r"\[0, 5\), received values in \[-1, 2\]"),
    (numpy.ones((4, 20)), numpy.zeros(4), "labels must be integers"),
    (numpy.ones((4, 20)), numpy.array([True, False, True, False]), "labels must be integers, received dtype bool"),
    (numpy.ones((4, 20)), numpy.zeros((4, 4)), r"expected t of shape \(4,\) class indices or \(4, 5\) one-hot"),
    (numpy.ones(20), numpy.zeros(1, int), r"received shape \(20,\)"),
    (numpy.ones((0, 20)), numpy.zeros(0, int), r"with N >= 1, received shape \(0, 20\)"),
    (numpy.ones((4, 20)) * 1j, numpy.zeros(4, int), "expected real numbers in x, received dtype complex128"),
    (numpy.ones((4, 20)), numpy.eye(5)[[0, 1, 2, 3]] * 1j,
     "one-hot targets must be real numbers, received dtype complex128"),
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


@pytest.mark.parametrize("t, message", [
    (None, r"expected targets t \(class indices or one-hot rows\), received None"),
    (numpy.full((4, 5), "a"), "one-hot targets must be real numbers, received dtype <U1"),
    (numpy.full((4, 5), 1.0, dtype=object), "one-hot targets must be real numbers, received dtype object"),
])
@pytest.mark.parametrize("method", ["train_step", "gradient", "loss", "accuracy"])
def test_targets_that_are_not_numbers_are_refused_before_anything_changes(backend, t, message,
                                                                          method):
    if backend.gpu and t is not None:
        pytest.skip("CuPy arrays hold no strings or objects")
    net = MultiLayerNet(20, [10], 5, use_batchnorm=True, use_dropout=True, seed=0, backend=backend)
    before = _snapshot(net), {k: host(v).copy() for k, v in net.buffers.items()}
    args = (backend.asarray(numpy.ones((4, 20))), t) + ((SGD(0.1),) if method == "train_step" else ())
    with pytest.raises(ValueError, match=f"MultiLayerNet.{method}: {message}"):
        getattr(net, method)(*args)
    for key, value in before[0].items():
        numpy.testing.assert_array_equal(host(net.params[key]), value)
    for key, value in before[1].items():
        numpy.testing.assert_array_equal(host(net.buffers[key]), value)


@pytest.mark.parametrize("label", [5, 10**9, -10**9])
def test_a_cpu_backend_checks_labels_even_when_told_not_to(backend, label):
    """``check_labels=False`` saves a device wait on a GPU; on a CPU an unchecked label
    would index outside the arrays (the numba kernels have no bounds checks)."""
    if backend.gpu:
        pytest.skip("on a GPU check_labels=False skips the check, as documented")
    for sizes, optimizer in (((20, [10], 5), SGD(0.1)), ((20, [10, 8], 5), Adam()),
                             ((20, [64, 64], 5), Momentum())):
        net = MultiLayerNet(*sizes, seed=0, backend=backend)
        t = numpy.zeros(300, dtype=numpy.int64)
        t[7] = label
        with pytest.raises(ValueError, match=r"train_step: labels must lie in \[0, 5\)"):
            net.train_step(numpy.ones((300, 20)), t, optimizer, check_labels=False)


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
    ({"hidden_size_list": 100}, r"hidden_size_list must be a list of layer widths, received 100"),
    ({"hidden_size_list": [5.0]}, r"layer sizes must be positive integers, received \[4, 5.0, 2\]"),
    ({"weight_decay_lambda": float("inf")}, "weight_decay_lambda must be a finite number >= 0, received inf"),
    ({"seed": -1}, "seed must be None, an integer >= 0 or anything else numpy.random.default_rng "
                   "takes, received -1"),
    ({"seed": 1.5}, "seed must be None, .*, received 1.5"),
    ({"seed": True}, "seed must be None, .*, received True"),
    ({"batchnorm_momentum": 1.5}, r"batchnorm_momentum must be in \[0, 1\], received 1.5"),
    ({"batchnorm_eps": 0}, "batchnorm_eps must be > 0, received 0"),
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


# ------------------------------------------------- dropout, batchnorm, weight decay
COMBINATIONS = [(act, dropout, batchnorm, lam) for act in ("relu", "sigmoid")
                for dropout in (False, True) for batchnorm in (False, True) for lam in (0.0, 0.1)]


def _extended(backend, activation="relu", dropout=True, batchnorm=True, lam=0.0, dtype="float64",
              seed=0):
    return MultiLayerNet(6, [5, 4], 3, activation=activation, weight_init_std=1.0,
                         weight_decay_lambda=lam, use_dropout=dropout, use_batchnorm=batchnorm,
                         seed=seed, backend=backend, dtype=dtype)


@pytest.mark.parametrize("activation, dropout, batchnorm, lam", COMBINATIONS)
def test_gradient_check_passes_for_every_option(backend, activation, dropout, batchnorm, lam):
    """numerical_gradient keeps gradient's dropout masks; BatchNorm runs in training mode."""
    net = _extended(backend, activation, dropout, batchnorm, lam)
    rng = numpy.random.default_rng(2)
    for i in (1, 2, 3):  # off zero, so a fully dropped row cannot sit on a ReLU kink
        net.params[f"b{i}"][...] = backend.asarray(rng.uniform(0.1, 0.5, net.params[f"b{i}"].shape))
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    backprop, numeric = net.gradient(x, t), net.numerical_gradient(x, t)
    assert set(backprop) == set(numeric) == set(net.params)
    for key in backprop:
        if batchnorm and key in ("b1", "b2"):  # a BatchNorm cancels the bias before it
            assert float(abs(host(backprop[key])).max()) < 1e-12
            assert float(abs(host(numeric[key])).max()) < 1e-8
        else:
            assert rel_error(backprop[key], numeric[key]) < 1e-6, key


def test_weight_decay_adds_to_loss_and_gradient(backend):
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    plain = _extended(backend, dropout=False, lam=0.0)
    decayed = _extended(backend, dropout=False, lam=0.3)
    squares = sum(float((host(plain.params[f"W{i}"]) ** 2).sum()) for i in (1, 2, 3))
    assert float(decayed.loss(x, t)) == pytest.approx(float(plain.loss(x, t)) + 0.15 * squares,
                                                     rel=1e-12)
    grads, plain_grads = decayed.gradient(x, t), plain.gradient(x, t)
    for key, g in plain_grads.items():
        extra = 0.3 * host(plain.params[key]) if key.startswith("W") else 0
        assert_close(grads[key], host(g) + extra, "float64", key)


def test_extended_net_names_parameters_and_buffers_like_the_textbook(backend, dtype):
    net = _extended(backend, dtype=dtype)
    assert {k: tuple(v.shape) for k, v in net.params.items()} == {
        "W1": (6, 5), "b1": (5,), "gamma1": (5,), "beta1": (5,), "W2": (5, 4), "b2": (4,),
        "gamma2": (4,), "beta2": (4,), "W3": (4, 3), "b3": (3,)}
    assert {k: tuple(v.shape) for k, v in net.buffers.items()} == {
        "running_mean1": (5,), "running_var1": (5,), "running_mean2": (4,), "running_var2": (4,)}
    assert all(a.dtype == numpy.dtype(dtype) for a in (*net.params.values(), *net.buffers.values()))
    assert list(net.layers) == ["Affine1", "BatchNorm1", "Activation1", "Dropout1", "Affine2",
                                "BatchNorm2", "Activation2", "Dropout2", "Affine3"]
    assert net.config() == {"input_size": 6, "hidden_size_list": [5, 4], "output_size": 3,
                            "activation": "relu", "use_dropout": True, "dropout_ratio": 0.5,
                            "use_batchnorm": True, "batchnorm_momentum": 0.9, "batchnorm_eps": 1e-6,
                            "weight_decay_lambda": 0.0, "dtype": dtype}


def test_same_seed_same_weights_with_or_without_the_options():
    plain = MultiLayerNet(6, [5, 4], 3, seed=4)
    extended = MultiLayerNet(6, [5, 4], 3, seed=4, use_dropout=True, use_batchnorm=True)
    for key, value in plain.params.items():
        numpy.testing.assert_array_equal(extended.params[key], value)


def test_running_stats_update_in_training_and_serve_inference(backend):
    net = _extended(backend, dropout=False)
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    before = _snapshot(net) | {k: host(v).copy() for k, v in net.buffers.items()}
    predicted = host(net.predict(x)).copy()
    assert all(numpy.array_equal(host(net.buffers[k]), before[k]) for k in net.buffers)
    net.loss(x, t)  # an evaluation: the statistics stay
    assert all(numpy.array_equal(host(net.buffers[k]), before[k]) for k in net.buffers)
    net.loss(x, t, train_flg=True)
    assert not numpy.allclose(host(net.buffers["running_mean1"]), before["running_mean1"])
    assert not numpy.allclose(host(net.predict(x)), predicted)  # inference follows the buffers
    for key in net.buffers:  # as a checkpoint load does: in place, through the dict
        net.buffers[key][...] = backend.asarray(before[key])
    numpy.testing.assert_allclose(host(net.predict(x)), predicted, rtol=1e-12)


def test_batchnorm_momentum_and_eps_reach_the_layers(backend):
    net = MultiLayerNet(6, [5], 3, use_batchnorm=True, batchnorm_momentum=0.25,
                        batchnorm_eps=1e-3, seed=0, backend=backend)
    layer = net.layers["BatchNorm1"]
    assert (layer.momentum, layer.eps) == (0.25, 1e-3)
    assert (net.config()["batchnorm_momentum"], net.config()["batchnorm_eps"]) == (0.25, 1e-3)
    x, t = _batch(10, 6, 3)
    net.loss(backend.asarray(x), backend.asarray(t), train_flg=True)  # one pass from mean 0, var 1
    z = x @ host(net.params["W1"])
    numpy.testing.assert_allclose(host(net.buffers["running_mean1"]), 0.75 * z.mean(axis=0),
                                  rtol=1e-12)
    numpy.testing.assert_allclose(host(net.buffers["running_var1"]), 0.25 + 0.75 * z.var(axis=0),
                                  rtol=1e-12)


def test_numerical_gradient_leaves_buffers_and_masks_as_they_were(backend):
    net = _extended(backend)
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    net.gradient(x, t)
    buffers = {k: host(v).copy() for k, v in net.buffers.items()}
    net.numerical_gradient(x, t)
    for key, value in buffers.items():
        numpy.testing.assert_array_equal(host(net.buffers[key]), value)
    assert not any(net.layers[f"Dropout{i}"].fixed_mask for i in (1, 2))


def test_inference_is_deterministic_and_training_is_not(backend):
    net = _extended(backend, batchnorm=False)
    x = backend.asarray(_batch(10, 6, 3)[0])
    numpy.testing.assert_array_equal(host(net.predict(x)), host(net.predict(x)))
    assert not numpy.array_equal(host(net.predict(x, train_flg=True)),
                                 host(net.predict(x, train_flg=True)))


OPTIMIZER_MAKERS = {
    "SGD": lambda: SGD(lr=0.1), "SGD-clip": lambda: SGD(lr=0.1, clip_norm=0.5),
    "Momentum": lambda: Momentum(lr=0.05), "Momentum-clip": lambda: Momentum(lr=0.05, clip_norm=0.5),
    "Nesterov": lambda: Nesterov(lr=0.05), "AdaGrad": lambda: AdaGrad(lr=0.05),
    "RMSprop": lambda: RMSprop(lr=0.01, decay_rate=0.9), "Adam": lambda: Adam(lr=0.01),
    "Adam-clip": lambda: Adam(lr=0.01, clip_norm=0.5)}
#: name -> (MultiLayerNet options, one-hot labels)
NET_OPTIONS = {
    "plain": ({}, False), "one-hot": ({}, True), "sigmoid-decay": ({"activation": "sigmoid",
                                                                  "weight_decay_lambda": 0.1}, False),
    "dropout": ({"use_dropout": True}, False), "batchnorm": ({"use_batchnorm": True}, False),
    "batchnorm-decay-one-hot": ({"use_batchnorm": True, "weight_decay_lambda": 0.1}, True),
    "all": ({"use_dropout": True, "use_batchnorm": True, "weight_decay_lambda": 0.1}, True)}


@pytest.mark.parametrize("optimizer", OPTIMIZER_MAKERS)
@pytest.mark.parametrize("options", NET_OPTIONS)
def test_train_step_equals_gradient_then_update(backend, dtype, optimizer, options):
    """Every optimizer and option: same parameters, buffers and optimizer state, step after step."""
    _assert_step_equals_gradient_then_update(backend, dtype, optimizer, options, [5, 4])


@pytest.mark.parametrize("optimizer", ["SGD", "Momentum", "Adam"])
@pytest.mark.parametrize("options", ["plain", "one-hot", "sigmoid-decay"])
def test_train_step_of_one_hidden_layer_equals_gradient_then_update(backend, dtype, optimizer,
                                                                    options):
    """The shape numba runs as one compiled SGD step (index labels, no decay), and its
    neighbours, which must not take that path."""
    _assert_step_equals_gradient_then_update(backend, dtype, optimizer, options, [5])


def _assert_step_equals_gradient_then_update(backend, dtype, optimizer, options, hidden):
    kwargs, one_hot = NET_OPTIONS[options]
    x, t = _batch(10, 6, 3)
    if one_hot:
        t = numpy.eye(3)[t]
    x, t = backend.asarray(x), backend.asarray(t)
    stepped, manual = (MultiLayerNet(6, hidden, 3, weight_init_std=1.0, seed=5, backend=backend,
                                     dtype=dtype, **kwargs) for _ in range(2))
    opt_stepped, opt_manual = OPTIMIZER_MAKERS[optimizer](), OPTIMIZER_MAKERS[optimizer]()
    for step in range(3):
        loss = stepped.train_step(x, t, opt_stepped)
        assert loss.dtype == numpy.dtype(dtype)
        opt_manual.update(manual.params, manual.gradient(x, t), backend=backend)
        # a bias right before a BatchNorm has a true gradient of 0: its gradients are rounding
        # noise (which Adam, AdaGrad and RMSprop normalise), the running mean follows it, and
        # neither changes the training output
        noise = ("b1", "b2", "running_mean1", "running_mean2") if kwargs.get("use_batchnorm") else ()
        for key in manual.params:
            assert stepped.params[key].dtype == numpy.dtype(dtype)
            if key not in noise:
                assert_close(stepped.params[key], manual.params[key], dtype,
                             f"{key} after {step + 1}")
        for key in manual.buffers:
            if key not in noise:
                assert_close(stepped.buffers[key], manual.buffers[key], dtype, key)
        for name in opt_manual.state_names:
            for key, state in getattr(opt_manual, name).items():
                if key not in noise:
                    assert_close(getattr(opt_stepped, name)[key], state, dtype, f"{name}[{key}]")
    if noise:
        assert_close(stepped.predict(x, train_flg=True), manual.predict(x, train_flg=True), dtype,
                     "predict")


def test_train_step_returns_the_loss_before_its_update(backend, dtype):
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    for optimizer in (SGD(lr=0.1), Adam(), Nesterov()):
        net = MultiLayerNet(6, [5, 4], 3, weight_decay_lambda=0.1, seed=5, backend=backend,
                            dtype=dtype)
        expected = net.loss(x, t)
        assert_close(net.train_step(x, t, optimizer), expected, dtype, type(optimizer).__name__)


def test_biases_before_a_batchnorm_move_its_running_mean_as_in_the_reference(accelerated, dtype):
    """Their gradient is 0, but not their value: the batch mean, and so the running mean,
    includes them (the step's own tests skip them as rounding noise)."""
    x, t = _batch(10, 6, 3)
    nets = [MultiLayerNet(6, [5, 4], 3, use_batchnorm=True, seed=3, backend=be, dtype=dtype)
            for be in (accelerated, "numpy")]
    for net in nets:
        net.params["b1"] = numpy.linspace(-1, 1, 5)
        net.params["b2"] = numpy.linspace(2, 3, 4)
        for _ in range(2):
            net.train_step(net.backend.asarray(x), net.backend.asarray(t), SGD(0.1))
    ours, ref = nets
    for key in ref.buffers:
        assert_close(ours.buffers[key], ref.buffers[key], dtype, key)
    assert_close(ours.predict(accelerated.asarray(x)), ref.predict(x), dtype, "predict")


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_batchnorm_net_agrees_with_the_reference(accelerated, dtype, activation):
    x, t = _batch(10, 6, 3)
    ours = _extended(accelerated, activation, dropout=False, lam=0.1, dtype=dtype, seed=3)
    ref = _extended("numpy", activation, dropout=False, lam=0.1, dtype=dtype, seed=3)
    assert_close(ours.loss(accelerated.asarray(x), accelerated.asarray(t), train_flg=True),
                 ref.loss(x, t, train_flg=True), dtype, "loss")
    grads, ref_grads = ours.gradient(accelerated.asarray(x), accelerated.asarray(t)), ref.gradient(x, t)
    for key in ref_grads:
        assert grads[key].dtype == numpy.dtype(dtype)
        if key in ("b1", "b2"):  # zero up to rounding: the BatchNorm after it cancels it
            assert float(abs(host(grads[key])).max()) < 1e-6
        else:
            assert_close(grads[key], ref_grads[key], dtype, key)
    for key in ref.buffers:
        assert_close(ours.buffers[key], ref.buffers[key], dtype, key)
    assert_close(ours.predict(accelerated.asarray(x)), ref.predict(x), dtype, "predict")


@pytest.mark.parametrize("optimizer, activation", [("SGD", "relu"), ("Momentum", "sigmoid"),
                                                    ("Adam", "relu"), ("Adam", "sigmoid")])
def test_batchnorm_train_steps_agree_with_the_reference(accelerated, dtype, optimizer, activation):
    """The accelerated step (numba's: one compiled call, BatchNorm included) against the
    NumPy reference, step after step."""
    x, t = _batch(10, 6, 3)
    nets = [MultiLayerNet(6, [5, 4], 3, activation=activation, use_batchnorm=True,
                          weight_decay_lambda=0.1, seed=3, backend=b, dtype=dtype)
            for b in (accelerated, "numpy")]
    optimizers = [OPTIMIZER_MAKERS[optimizer]() for _ in nets]
    batches = [(accelerated.asarray(x), accelerated.asarray(t)), (x, t)]
    # the biases before a BatchNorm have a true gradient of 0: SGD and Momentum keep them at
    # rounding noise (compared absolutely), Adam normalises that noise (left out, with the
    # running means that follow them; they do not change the training output)
    noise = ("b1", "b2", "running_mean1", "running_mean2")
    for step in range(3):
        losses = [net.train_step(*batch, opt) for net, batch, opt in zip(nets, batches, optimizers)]
        assert_close(losses[0], losses[1], dtype, f"loss {step + 1}")
        ours, ref = nets
        for arrays, ref_arrays in ((ours.params, ref.params), (ours.buffers, ref.buffers)):
            for key in ref_arrays:
                if key not in noise:
                    assert_close(arrays[key], ref_arrays[key], dtype, f"{key} after {step + 1}")
                elif optimizer != "Adam":
                    difference = host(arrays[key]) - host(ref_arrays[key])
                    assert float(abs(difference).max()) < 1e-6, key
    assert_close(nets[0].predict(batches[0][0], train_flg=True),
                 nets[1].predict(x, train_flg=True), dtype, "predict")


def test_seeded_dropout_training_is_reproducible(backend):
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    runs = []
    for _ in range(2):
        net, opt = _extended(backend, seed=9), Adam(lr=0.01)
        runs.append([float(net.train_step(x, t, opt)) for _ in range(3)] + [_snapshot(net)])
    assert runs[0][:3] == runs[1][:3]
    for key, value in runs[0][3].items():
        numpy.testing.assert_array_equal(runs[1][3][key], value)


def test_the_books_dropout_ration_spelling_is_taken(backend):
    """``MultiLayerNetExtend(..., dropout_ration=0.3)`` from the book runs unchanged."""
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    book = MultiLayerNet(6, [5], 3, use_dropout=True, dropout_ration=0.3, seed=0, backend=backend)
    ours = MultiLayerNet(6, [5], 3, use_dropout=True, dropout_ratio=0.3, seed=0, backend=backend)
    assert book.dropout_ratio == 0.3
    assert float(book.train_step(x, t, SGD())) == float(ours.train_step(x, t, SGD()))


@pytest.mark.parametrize("kwargs, message", [
    ({"dropout_ratio": 1}, r"dropout_ratio must be in \[0, 1\), received 1"),
    ({"dropout_ration": 1}, r"dropout_ratio must be in \[0, 1\), received 1"),
    ({"dropout_ratio": 0.2, "dropout_ration": 0.3},
     r"give dropout_ratio or the book's dropout_ration, not both; received 0.2 and 0.3"),
    ({"weight_decay_lambda": -0.1}, "weight_decay_lambda must be >= 0, received -0.1"),
])
def test_bad_option_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"MultiLayerNet: {message}"):
        MultiLayerNet(4, [3], 2, **kwargs)


@pytest.mark.parametrize("sizes, optimizer", [
    ((4, [3], 2), "SGD"),         # the tiny path: one compiled call where a backend has it
    ((4, [6, 5], 3), "SGD"),      # products with the update folded in
    ((4, [6, 5], 3), "Momentum"),  # the velocity folded into its product
    ((4, [6, 5], 3), "Adam"),     # the materialised gradient buffer and one fused pass
])
def test_assigned_params_reach_every_path(backend, dtype, tmp_path, sizes, optimizer):
    """``net.params[k] = array`` copies into the net's array: step, layers, checkpoints agree."""
    ours, other = (MultiLayerNet(*sizes, seed=seed, backend=backend, dtype=dtype) for seed in (0, 9))
    arrays = {key: ours.params[key] for key in ours.params}
    for key, value in other.params.items():
        ours.params[key] = host(value)  # host float64 arrays: cast and moved like load_params
    assert all(ours.params[key] is arrays[key] for key in arrays)
    assert ours.layers["Affine1"].W is ours.params["W1"]
    x, t = (backend.asarray(a) for a in _batch(6, sizes[0], sizes[-1]))
    for net in (ours, other):
        save_params(net, tmp_path / f"{id(net)}.npz")
    with numpy.load(tmp_path / f"{id(ours)}.npz") as a, numpy.load(tmp_path / f"{id(other)}.npz") as b:
        assert {k: a[k].tolist() for k in a.files} == {k: b[k].tolist() for k in b.files}
    numpy.testing.assert_array_equal(host(ours.predict(x)), host(other.predict(x)))
    optimizers = (OPTIMIZER_MAKERS[optimizer](), OPTIMIZER_MAKERS[optimizer]())
    for _ in range(2):
        losses = [net.train_step(x, t, opt) for net, opt in zip((ours, other), optimizers)]
        assert float(losses[0]) == float(losses[1])
    for key in other.params:
        numpy.testing.assert_array_equal(host(ours.params[key]), host(other.params[key]))
        numpy.testing.assert_array_equal(host(ours.grads[key]), host(other.grads[key]))
    load_params(ours, tmp_path / f"{id(other)}.npz")  # back to the saved values, in place
    assert all(ours.params[key] is arrays[key] for key in arrays)


def test_bad_assignments_to_params_change_nothing(backend):
    net = TwoLayerNet(4, 3, 2, seed=0, backend=backend)
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"TwoLayerNet.params\['W1'\]: expected shape \(4, 3\), "
                                         r"received \(3, 4\); nothing was changed"):
        net.params["W1"] = numpy.ones((3, 4))
    with pytest.raises(ValueError, match="no array 'W3' to assign to.*'W1', 'b1', 'W2', 'b2'"):
        net.params["W3"] = numpy.ones((3, 2))
    with pytest.raises(ValueError, match="'b2' cannot be removed"):
        del net.params["b2"]
    for value in (numpy.ones((4, 3)) * 1j, numpy.full((4, 3), None, dtype=object)):
        with pytest.raises(ValueError, match=rf"TwoLayerNet.params\['W1'\]: expected real numbers, "
                                             rf"received dtype {value.dtype}; nothing was changed"):
            net.params["W1"] = value
    with pytest.raises(ValueError, match="running_mean1"):
        net.buffers["running_mean1"] = numpy.zeros(3)
    for name in ("params", "buffers", "grads"):
        with pytest.raises(AttributeError, match=rf"TwoLayerNet.{name} cannot be replaced: .*"
                                                 rf"assign into it \(net.{name}\[key\] = array\)"):
            setattr(net, name, {key: numpy.zeros(v.shape) for key, v in before.items()})
    assert list(net.params) == ["W1", "b1", "W2", "b2"]
    for key, value in before.items():
        numpy.testing.assert_array_equal(host(net.params[key]), value)


def test_params_and_grads_are_views_of_one_buffer_each(backend, dtype):
    net = MultiLayerNet(4, [6, 5], 3, use_batchnorm=True, seed=0, backend=backend, dtype=dtype)
    assert net.params.flat.size == sum(p.size for p in net.params.values())
    assert net.params.flat.dtype == numpy.dtype(dtype)
    net.params.flat[...] = 0.5
    assert all((host(p) == 0.5).all() for p in net.params.values())
    grads = net.gradient(*(backend.asarray(a) for a in _batch(6, 4, 3)))
    for key, grad in grads.items():
        numpy.testing.assert_array_equal(host(grad), host(net.grads[key]))
        assert grad is not net.grads[key]  # gradient() returns copies; grads is reused


@pytest.mark.parametrize("optimizer", ["Adam", "Momentum", "SGD"])
def test_one_optimizer_may_mix_train_step_and_update(backend, optimizer):
    """The flat state and the step counts are the same whichever way an update comes in."""
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    mixed, manual = (MultiLayerNet(6, [5, 4], 3, seed=5, backend=backend) for _ in range(2))
    opt_mixed, opt_manual = OPTIMIZER_MAKERS[optimizer](), OPTIMIZER_MAKERS[optimizer]()
    for step in range(4):
        if step % 2:
            opt_mixed.update(mixed.params, mixed.gradient(x, t), backend=backend)
        else:
            mixed.train_step(x, t, opt_mixed)
        opt_manual.update(manual.params, manual.gradient(x, t), backend=backend)
    assert opt_mixed.step == opt_manual.step == {key: 4 for key in manual.params}
    for key in manual.params:
        assert_close(mixed.params[key], manual.params[key], "float64", key)


@pytest.mark.parametrize("optimizer", ["Adam", "SGD"])
def test_step_counts_read_between_steps(backend, optimizer):
    """A step counts every key at once; reading ``step`` between steps sees every count."""
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    net, opt = MultiLayerNet(6, [5, 4], 3, seed=5, backend=backend), OPTIMIZER_MAKERS[optimizer]()
    for step in range(1, 4):
        net.train_step(x, t, opt)
        assert opt.step == {key: step for key in net.params}


def test_count_flat_without_its_flat_rule_is_refused(backend):
    net, opt = MultiLayerNet(6, [5], 3, seed=5, backend=backend), Adam()
    with pytest.raises(RuntimeError, match=r"Adam\.count_flat: no flat_rule of these params"):
        opt.count_flat(net.params)
    assert opt.step == {}
    other = MultiLayerNet(6, [5], 3, seed=6, backend=backend)
    assert opt.flat_rule(other.params, net.backend) is not None
    with pytest.raises(RuntimeError, match="call flat_rule first"):
        opt.count_flat(net.params)
    assert not any(opt.step.values())  # nothing was updated


@pytest.mark.parametrize("duplicate", ["deepcopy", "pickle"])
@pytest.mark.parametrize("options", ["plain", "dropout", "batchnorm"])
@pytest.mark.parametrize("optimizer", ["Adam", "Momentum", "SGD"])
def test_a_copied_net_and_optimizer_train_on_as_the_original(backend, duplicate, options, optimizer):
    """A copy's layers and flat buffers are one set of arrays again, so its steps take effect
    (copied views used to become arrays of their own, and the copy stopped learning)."""
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    net = MultiLayerNet(6, [5, 4], 3, seed=5, backend=backend, **NET_OPTIONS[options][0])
    opt = OPTIMIZER_MAKERS[optimizer]()
    for _ in range(2):
        net.train_step(x, t, opt)
    twin, twin_opt = (copy.deepcopy((net, opt)) if duplicate == "deepcopy"
                      else pickle.loads(pickle.dumps((net, opt))))
    assert twin.backend is net.backend
    assert twin.layers["Affine1"].W is twin.params["W1"]
    start = _snapshot(twin)
    for _ in range(3):
        assert float(twin.train_step(x, t, twin_opt)) == float(net.train_step(x, t, opt))
    assert twin_opt.step == opt.step
    for key in net.params:
        assert not numpy.array_equal(host(twin.params[key]), start[key]), key
        numpy.testing.assert_array_equal(host(twin.params[key]), host(net.params[key]))
    for key in net.buffers:
        numpy.testing.assert_array_equal(host(twin.buffers[key]), host(net.buffers[key]))
    for key in ("Dropout1", "Dropout2") if options == "dropout" else ():  # the masks last used
        numpy.testing.assert_array_equal(host(twin.layers[key].mask), host(net.layers[key].mask))


def test_a_shallow_copy_of_an_optimizer_leaves_the_original_as_it_was(backend):
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    net, other = (MultiLayerNet(6, [5, 4], 3, seed=5, backend=backend) for _ in range(2))
    opt = Adam(lr=0.01)
    net.train_step(x, t, opt)
    twin, twin_opt = copy.deepcopy((net, opt))
    snap = copy.copy(opt)
    other.train_step(x, t, snap)
    for _ in range(2):
        net.train_step(x, t, opt), twin.train_step(x, t, twin_opt)
    for key in net.params:
        numpy.testing.assert_array_equal(host(net.params[key]), host(twin.params[key]))
        numpy.testing.assert_array_equal(host(opt.m[key]), host(twin_opt.m[key]))


def test_what_numpy_takes_for_sizes_and_seeds_builds_the_same_net():
    ref = MultiLayerNet(6, [5, 4], 3, seed=3)
    for hidden, seed in ((numpy.array([5, 4]), numpy.random.SeedSequence(3)), (range(5, 3, -1), 3)):
        net = MultiLayerNet(6, hidden, 3, seed=seed)
        for key in ref.params:
            numpy.testing.assert_array_equal(net.params[key], ref.params[key])


def test_an_evaluation_between_gradient_and_numerical_gradient_keeps_the_masks(backend):
    net = MultiLayerNet(6, [5], 3, use_dropout=True, seed=0, backend=backend)
    x, t = (backend.asarray(a) for a in _batch(8, 6, 3))
    with net.repeatable_training_passes():
        backprop = net.gradient(x, t)
        net.loss(x, t), net.predict(x)  # evaluations: no masks drawn, none dropped
        numerical = net.numerical_gradient(x, t)
    for key in backprop:
        assert rel_error(backprop[key], numerical[key]) < 1e-6, key


def test_numerical_gradient_on_blocks_matches_the_full_one(backend):
    net = MultiLayerNet(6, [5], 3, seed=0, backend=backend)
    x, t = (backend.asarray(a) for a in _batch(4, 6, 3))
    full = net.numerical_gradient(x, t)
    blocks = {"W1": slice(3, 9), "b1": slice(0, 2), "W2": slice(14, 15), "b2": slice(1, 3)}
    sampled = net.numerical_gradient(x, t, blocks=blocks)
    assert list(sampled) == list(blocks)
    for key, block in blocks.items():
        numpy.testing.assert_allclose(host(sampled[key]), host(full[key]).reshape(-1)[block],
                                      rtol=1e-12)
    for wrong in ({"W1": numpy.array([0, 1])}, {"w1": slice(0, 2)}):  # a copy; no such key
        with pytest.raises(ValueError, match=r"numerical_gradient: blocks must map keys of params "
                                             r"\['W1', 'b1', 'W2', 'b2'\] to slices"):
            net.numerical_gradient(x, t, blocks=wrong)


@pytest.mark.parametrize("optimizer", ["Adam", "Momentum", "SGD"])
def test_train_step_refuses_what_is_not_an_optimizer_or_does_not_fit_it(backend, optimizer):
    x, t = (backend.asarray(a) for a in _batch(10, 6, 3))
    net = MultiLayerNet(6, [5, 4], 3, seed=5, backend=backend)
    before = _snapshot(net)
    for wrong in (SGD, 0.1, None):
        with pytest.raises(TypeError, match=r"MultiLayerNet.train_step: optimizer must be an "
                                            r"optimizer instance such as fastbp.optim.SGD"):
            net.train_step(x, t, wrong)
    opt = OPTIMIZER_MAKERS[optimizer]()
    MultiLayerNet(6, [7, 4], 3, seed=5, backend=backend).train_step(x, t, opt)
    if opt.state_names:
        with pytest.raises(ValueError, match=r"MultiLayerNet.train_step: params\['W1'\] must keep "
                                             r"the shape \(6, 7\) this optimizer's state was made "
                                             r"for, received \(6, 5\); use a new optimizer"):
            net.train_step(x, t, opt)
    else:  # SGD holds no state: any net may use it
        net.train_step(x, t, opt)
        before = _snapshot(net)
    for key, value in before.items():
        numpy.testing.assert_array_equal(host(net.params[key]), value)


def test_params_update_checks_every_array_before_copying_any(backend):
    net = TwoLayerNet(4, 3, 2, seed=0, backend=backend)
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"params\['b1'\]: expected shape \(3,\), received \(7,\); "
                                         "nothing was changed"):
        net.params.update({"W1": numpy.ones((4, 3)), "b1": numpy.ones(7)})
    for key, value in before.items():
        numpy.testing.assert_array_equal(host(net.params[key]), value)
    net.params.update({"W1": numpy.ones((4, 3))}, b1=numpy.full(3, 2.0))
    assert (host(net.params["W1"]) == 1).all() and (host(net.layers["Affine1"].b) == 2).all()


def test_a_float32_net_refuses_values_that_would_overflow_to_inf(backend):
    net = TwoLayerNet(4, 3, 2, seed=0, backend=backend, dtype="float32")
    before = _snapshot(net)
    huge = numpy.ones((4, 3))
    huge[1, 2] = 1e39
    with pytest.raises(ValueError, match=r"TwoLayerNet.params\['W1'\]: values beyond the range of "
                                         r"float32 \(largest 1e\+39\) would become inf; nothing"):
        net.params["W1"] = huge
    numpy.testing.assert_array_equal(host(net.params["W1"]), before["W1"])
    net.params["W1"] = numpy.full((4, 3), 3e38)  # within range: kept
    assert numpy.isfinite(host(net.params["W1"])).all()


@pytest.mark.parametrize("use_trainer", [False, True])
def test_batchnorm_refuses_to_train_on_one_sample(backend, use_trainer):
    """One sample's variance is 0: it would normalise to 0 and train on nothing (PyTorch refuses
    it too); the Trainer never cuts such a batch."""
    net = MultiLayerNet(6, [5], 3, use_batchnorm=True, seed=0, backend=backend)
    x, t = _batch(9, 6, 3)
    if use_trainer:
        sizes = []
        step = net.train_step
        net.train_step = lambda xb, tb, *args, **kwargs: (sizes.append(len(xb)),
                                                          step(xb, tb, *args, **kwargs))[1]
        Trainer(net, SGD(lr=0.1), x, t, epochs=2, batch_size=4, verbose=False).fit()
        assert sizes == [4, 5, 4, 5]  # the last sample joins the batch before it
        with pytest.raises(ValueError, match="at least 2 .*BatchNorm.*received batch_size 1"):
            Trainer(net, SGD(lr=0.1), x, t, batch_size=1)
        return
    before, buffers = _snapshot(net), {k: host(v).copy() for k, v in net.buffers.items()}
    with pytest.raises(ValueError, match=r"MultiLayerNet.train_step: a net with BatchNorm trains "
                                         r"on batches of at least 2 samples.*\(1, 6\)"):
        net.train_step(x[:1], t[:1], Adam())
    with pytest.raises(ValueError, match=r"BatchNorm.forward: training needs a batch of at least 2"):
        net.gradient(x[:1], t[:1])
    for key, value in before.items():
        numpy.testing.assert_array_equal(host(net.params[key]), value)
    for key, value in buffers.items():
        numpy.testing.assert_array_equal(host(net.buffers[key]), value)
    assert net.predict(x[:1]).shape == (1, 3)  # inference on one sample is fine


@pytest.mark.parametrize("where", ["layer", "net"])
def test_batchnorm_settings_changed_after_construction_reach_every_step(accelerated, where):
    """The textbook sets a layer's momentum as a plain attribute; a compiled one-call step
    must read it as the layers do, so backends still agree with the reference."""
    x, t = _batch(12, 6, 3)
    nets = [MultiLayerNet(6, [5, 4], 3, use_batchnorm=True, seed=2, backend=be)
            for be in ("numpy", accelerated)]
    for net in nets:
        if where == "layer":
            for i in (1, 2):
                net.layers[f"BatchNorm{i}"].momentum, net.layers[f"BatchNorm{i}"].eps = 0.0, 1.0
        else:
            net.batchnorm_momentum, net.batchnorm_eps = 0.0, 1.0
        assert (net.batchnorm_momentum, net.batchnorm_eps) == (0.0, 1.0)
        assert (net.layers["BatchNorm2"].momentum, net.layers["BatchNorm2"].eps) == (0.0, 1.0)
        assert net.config()["batchnorm_momentum"] == 0.0
    optimizers = [SGD(lr=0.1), SGD(lr=0.1)]  # Adam would magnify the pre-BatchNorm biases'
    for _ in range(3):                       # rounding-noise gradients (true value 0)
        losses = [float(net.train_step(x, t, opt)) for net, opt in zip(nets, optimizers)]
        assert losses[1] == pytest.approx(losses[0], rel=1e-10)
    for key in nets[0].buffers:
        assert_close(nets[1].buffers[key], nets[0].buffers[key], "float64", key)
    # over the whole buffer: the biases before a BatchNorm are rounding noise (true value 0)
    assert_close(nets[1].params.flat, nets[0].params.flat, "float64", "params")


def test_batchnorm_layers_given_different_settings_still_train_alike(accelerated):
    x, t = _batch(12, 6, 3)
    nets = [MultiLayerNet(6, [5, 4], 3, use_batchnorm=True, seed=2, backend=be)
            for be in ("numpy", accelerated)]
    for net in nets:
        net.layers["BatchNorm2"].momentum = 0.5
        with pytest.raises(ValueError, match=r"batchnorm_momentum: the BatchNorm layers hold "
                                             r"different values \[0.5, 0.9\]"):
            net.config()
    optimizers = [SGD(lr=0.1), SGD(lr=0.1)]
    for _ in range(3):
        for net, opt in zip(nets, optimizers):
            net.train_step(x, t, opt)
    for key in nets[0].buffers:
        assert_close(nets[1].buffers[key], nets[0].buffers[key], "float64", key)

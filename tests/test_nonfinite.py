"""NaN and inf: they propagate through every hot path, and are never trained on silently."""

import math
import subprocess
import sys

import numpy
import pytest
from conftest import host

from fastbp.data import load_dataset
from fastbp.layers import ReLU
from fastbp.nets import MultiLayerNet, NonFiniteInputError, NonFiniteLossError, TwoLayerNet
from fastbp.optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop
from fastbp.train import Trainer, load_params, save_params

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow):RuntimeWarning")

NAN, INF = float("nan"), float("inf")
SPECIAL = [NAN, INF, -INF, -1.0, 0.0, 2.0]


def _special(backend, dtype):
    return backend.asarray(numpy.array([SPECIAL, SPECIAL[::-1]]), dtype=dtype)


# ------------------------------------------------------------------ hot paths
def test_relu_keeps_nan_like_numpy_maximum(backend, dtype):
    x = _special(backend, dtype)
    layer = ReLU(backend)
    out = layer.forward(x)
    assert out.dtype == numpy.dtype(dtype)
    numpy.testing.assert_array_equal(host(out), numpy.maximum(host(x), 0))
    dx = host(layer.backward(backend.asarray(numpy.ones((2, 6)), dtype=dtype)))
    numpy.testing.assert_array_equal(dx[0], [NAN, 1, 0, 0, 0, 1])  # NaN in, NaN gradient out
    numpy.testing.assert_array_equal(dx[1], [1, 0, 0, 0, 1, NAN])


def test_sigmoid_keeps_nan(backend, dtype):
    out = host(backend.sigmoid_forward(_special(backend, dtype)))
    numpy.testing.assert_array_equal(out[0, :3], [NAN, 1, 0])
    dx = backend.sigmoid_backward(_special(backend, dtype), backend.sigmoid_forward(
        backend.asarray(numpy.zeros((2, 6)), dtype=dtype)))
    assert numpy.isnan(host(dx)[0, 0])


@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_cross_entropy_keeps_nan(backend, dtype, one_hot):
    x = numpy.zeros((3, 4))
    x[1, 2] = NAN
    t = numpy.array([0, 1, 2])
    t = backend.asarray(numpy.eye(4, dtype=dtype)[t] if one_hot else t)
    loss, probs = backend.softmax_cross_entropy(backend.asarray(x, dtype=dtype), t)
    assert math.isnan(float(loss))
    assert numpy.isnan(host(probs)[1]).all() and numpy.isfinite(host(probs)[[0, 2]]).all()
    assert numpy.isnan(host(backend.softmax_cross_entropy_backward(probs, t))[1]).all()


def test_batchnorm_keeps_nan(backend, dtype):
    x = backend.asarray(numpy.array([[1.0, 2.0], [NAN, 3.0], [0.0, 1.0]]), dtype=dtype)
    ones, zeros = (backend.asarray(numpy.full(2, v), dtype=dtype) for v in (1, 0))
    out, xn, inv_std = backend.batchnorm_forward(x, ones, zeros, zeros.copy(), ones.copy(), 0.9,
                                                 1e-6, True)
    assert numpy.isnan(host(out)[:, 0]).all() and numpy.isfinite(host(out)[:, 1]).all()
    dx, dgamma, _ = backend.batchnorm_backward(backend.asarray(numpy.ones((3, 2)), dtype=dtype),
                                               xn, inv_std, ones, True)
    assert numpy.isnan(host(dx)[:, 0]).all() and math.isnan(float(host(dgamma)[0]))


@pytest.mark.parametrize("cls", [SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_updates_never_turn_a_nan_or_inf_gradient_into_a_finite_number(backend, dtype, cls, bad):
    params = {"W": backend.asarray(numpy.ones((2, 3)), dtype=dtype)}
    grad = numpy.full((2, 3), 0.5)
    grad[1, 2] = bad
    cls().update(params, {"W": backend.asarray(grad, dtype=dtype)}, backend=backend)
    W = host(params["W"])
    assert not numpy.isfinite(W[1, 2]) and numpy.isfinite(W[0]).all()


# ----------------------------------------------------------------- train_step
def _nets(backend, dtype):
    """One net per path: the tiny fused step, the numba gradient kernel (plain and with
    BatchNorm, whose running statistics it restores itself), and the composed step."""
    return {
        "tiny": lambda: (TwoLayerNet(4, 3, 2, seed=0, backend=backend, dtype=dtype), SGD(0.1)),
        "blas": lambda: (MultiLayerNet(4, [16, 12], 2, seed=0, backend=backend, dtype=dtype),
                         SGD(0.1)),
        "adam": lambda: (TwoLayerNet(4, 3, 2, seed=0, backend=backend, dtype=dtype), Adam()),
        "momentum+decay": lambda: (MultiLayerNet(4, [8], 2, weight_decay_lambda=0.1, seed=0,
                                                 backend=backend, dtype=dtype), Momentum()),
        "batchnorm": lambda: (MultiLayerNet(4, [8, 8], 2, use_batchnorm=True, seed=0,
                                            backend=backend, dtype=dtype), Adam()),
        "batchnorm+dropout": lambda: (MultiLayerNet(4, [8, 8], 2, use_batchnorm=True,
                                                    use_dropout=True, seed=0, backend=backend,
                                                    dtype=dtype), Adam()),
        "sigmoid": lambda: (MultiLayerNet(4, [8], 2, activation="sigmoid", seed=0,
                                          backend=backend, dtype=dtype), SGD(0.1)),
        "dropout": lambda: (MultiLayerNet(4, [8], 2, use_dropout=True, dropout_ratio=0.9, seed=0,
                                          backend=backend, dtype=dtype), Momentum()),
    }


def _state(net, optimizer):
    arrays = {f"param {k}": v for k, v in net.params.items()}
    arrays.update({f"buffer {k}": v for k, v in net.buffers.items()})
    for name in optimizer.state_names:
        arrays.update({f"{name} {k}": v for k, v in getattr(optimizer, name).items()})
    return {k: host(v).copy() for k, v in arrays.items()}, dict(getattr(optimizer, "step", {}))


_PATHS = ["tiny", "blas", "adam", "momentum+decay", "batchnorm", "batchnorm+dropout",
          "sigmoid", "dropout"]


def _assert_unchanged(net, optimizer, before):
    after = _state(net, optimizer)
    assert after[1] == before[1]  # Adam's step counts
    assert after[0].keys() == before[0].keys()
    for key, value in before[0].items():
        numpy.testing.assert_array_equal(after[0][key], value, err_msg=key)


def _trains_on(net, optimizer, x, t, before):
    loss = net.train_step(net.backend.asarray(x), net.backend.asarray(t), optimizer)
    assert math.isfinite(float(loss))
    assert any(not numpy.array_equal(host(net.params[k]), before[0][f"param {k}"])
               for k in net.params if k != f"W{net.n_layers}")


@pytest.mark.parametrize("path", _PATHS)
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_batch_holding_nan_or_inf_applies_no_update_and_training_goes_on(backend, dtype, path,
                                                                          bad):
    """Refused before the step: a sigmoid saturates at +-inf and ReLU zeroes -inf, so the
    loss can stay finite while the gradient is not."""
    net, optimizer = _nets(backend, dtype)[path]()
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((6, 4)), rng.integers(0, 2, 6)
    net.train_step(backend.asarray(x), backend.asarray(t), optimizer)  # state exists
    before = _state(net, optimizer)
    poisoned = x.copy()
    poisoned[2, 1] = bad
    with pytest.raises(NonFiniteInputError, match=r"train_step: x holds NaN or inf, so no update "
                                                  r"was applied"):
        net.train_step(backend.asarray(poisoned), backend.asarray(t), optimizer)
    _assert_unchanged(net, optimizer, before)
    _trains_on(net, optimizer, x, t, before)


@pytest.mark.parametrize("path", _PATHS)
def test_a_non_finite_loss_applies_no_update_and_training_goes_on(backend, dtype, path):
    """A finite batch through an inf weight (written into the array, as an overflowed update
    would leave it): the loss is NaN or inf, on every path's own check."""
    net, optimizer = _nets(backend, dtype)[path]()
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((6, 4)), rng.integers(0, 2, 6)
    net.train_step(backend.asarray(x), backend.asarray(t), optimizer)  # state exists
    last = net.params[f"W{net.n_layers}"]
    good = last.copy()
    last[0, 0] = INF
    before = _state(net, optimizer)
    with pytest.raises(NonFiniteLossError, match=r"train_step: the loss is (nan|inf), not a finite "
                                                 r"number, so no update was applied.*learning rate"):
        net.train_step(backend.asarray(x), backend.asarray(t), optimizer)
    _assert_unchanged(net, optimizer, before)
    last[...] = good
    _trains_on(net, optimizer, x, t, before)


def test_the_error_carries_the_loss(backend):
    net = TwoLayerNet(4, 3, 2, seed=0, backend=backend)
    net.params["W2"][0, 0] = NAN
    with pytest.raises(NonFiniteLossError) as info:
        net.train_step(backend.asarray(numpy.ones((2, 4))), backend.asarray(numpy.array([0, 1])),
                       SGD())
    assert math.isnan(info.value.loss)


def test_check_finite_false_applies_the_update(backend):
    net = TwoLayerNet(4, 3, 2, seed=0, backend=backend)
    x = numpy.ones((2, 4))
    x[0, 0] = NAN
    loss = net.train_step(backend.asarray(x), backend.asarray(numpy.array([0, 1])), SGD(),
                          check_finite=False)
    assert math.isnan(float(loss)) and not backend.all_finite(net.params.flat)


# -------------------------------------------------------------------- Trainer
def _poison_after(net, calls):
    """Put a NaN in the net's last weights at ``net.train_step`` call number ``calls``."""
    real, count = net.train_step, [0]

    def train_step(x, t, optimizer, **checks):
        count[0] += 1
        if count[0] == calls:
            net.params[f"W{net.n_layers}"][0, 0] = NAN
        return real(x, t, optimizer, **checks)

    net.train_step = train_step


@pytest.mark.parametrize("check_each_step", [True, False], ids=["cpu", "as-on-a-gpu"])
def test_trainer_stops_at_the_first_non_finite_loss(backend, monkeypatch, check_each_step):
    if not check_each_step:  # the GPU path checks the epoch's losses at once, when it ends
        monkeypatch.setattr(backend, "gpu", True)
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((40, 4)), rng.integers(0, 2, 40)
    net = TwoLayerNet(4, 3, 2, seed=0, backend=backend)
    _poison_after(net, 4 + 2)  # 4 steps an epoch: the second batch of epoch 2
    trainer = Trainer(net, Adam(lr=0.003), backend.asarray(x), backend.asarray(t), epochs=3,
                      batch_size=10, verbose=False)
    with pytest.raises(FloatingPointError,
                       match=r"epoch 2, batch 2 of 4, is nan.*learning rate is 0.003: lower it"):
        trainer.fit()
    assert len(trainer.history["loss"]) == 1 and math.isfinite(trainer.history["loss"][0])
    assert len(trainer.history["train_acc"]) == 1


def test_trainer_refuses_to_go_on_from_overflowed_weights(backend):
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((20, 4)), rng.integers(0, 2, 20)
    net = TwoLayerNet(4, 3, 2, seed=0, backend=backend)
    trainer = Trainer(net, SGD(), backend.asarray(x), backend.asarray(t), epochs=2,
                      batch_size=20, verbose=False)  # one step an epoch
    real = net.train_step

    def overflowing_step(*args, **kwargs):
        loss = real(*args, **kwargs)
        net.params["W2"][0, 0] = INF  # a finite loss whose update overflowed
        return loss

    net.train_step = overflowing_step
    with pytest.raises(FloatingPointError, match=r"after epoch 1 params\['W2'\] holds NaN or inf"):
        trainer.fit()


def test_a_learning_rate_that_overflows_float32_stops_training(backend):
    (x, t), _ = load_dataset("digits")
    net = MultiLayerNet(64, [100, 100], 10, seed=0, backend=backend, dtype="float32")
    trainer = Trainer(net, SGD(lr=1e5), backend.asarray(x), backend.asarray(t), epochs=2,
                      batch_size=32, verbose=False)
    with pytest.raises(FloatingPointError, match="epoch 1, batch .* learning rate is 100000"):
        trainer.fit()
    assert backend.all_finite(net.params.flat)  # the bad update was not applied


@pytest.mark.parametrize("dtype, lr", [("float32", "1e5"), ("float64", "1e300")])
def test_fastbp_train_diverging_is_one_line_and_writes_nothing(backend, tmp_path, dtype, lr):
    """One line on stderr, in a process of its own: no NumPy overflow warnings before it."""
    save, plot = tmp_path / "net.npz", tmp_path / "curves.png"
    run = subprocess.run([sys.executable, "-m", "fastbp", "train", "--optimizer", "sgd", "--lr", lr,
                          "--dtype", dtype, "--epochs", "2", "--quiet", "--backend", backend.name,
                          "--save", str(save), "--plot", str(plot)], capture_output=True, text=True)
    assert run.returncode == 1
    err = run.stderr
    assert err.count("\n") == 1 and "--lr" in err and "not a finite number" in err, err
    assert not save.exists() and not plot.exists()


# -------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("where", ["params", "buffers"])
def test_save_params_refuses_a_diverged_net_and_keeps_the_old_file(backend, tmp_path, where):
    net = MultiLayerNet(4, [3], 2, use_batchnorm=True, seed=0, backend=backend)
    path = tmp_path / "net.npz"
    save_params(net, path)
    old = path.read_bytes()
    arrays = net.params if where == "params" else net.buffers
    key = sorted(arrays)[0]
    arrays[key][0] = NAN
    with pytest.raises(ValueError, match=rf"{where}\['{key}'\] holds NaN or inf"):
        save_params(net, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]  # no temporary file left


def test_checkpoints_without_the_batchnorm_settings_still_load(tmp_path):
    import json

    net = MultiLayerNet(4, [3], 2, use_batchnorm=True, seed=0)
    save_params(net, tmp_path / "new.npz")
    with numpy.load(tmp_path / "new.npz") as archive:
        arrays = dict(archive)
    config = json.loads(str(arrays["config"]))
    del config["batchnorm_momentum"], config["batchnorm_eps"]  # as written before they existed
    arrays["config"] = numpy.array(json.dumps(config))
    numpy.savez(tmp_path / "old.npz", **arrays)
    target = MultiLayerNet(4, [3], 2, use_batchnorm=True, seed=1)
    load_params(target, tmp_path / "old.npz")
    numpy.testing.assert_array_equal(target.params["W1"], net.params["W1"])
    other = MultiLayerNet(4, [3], 2, use_batchnorm=True, batchnorm_eps=1e-3, seed=1)
    with pytest.raises(ValueError, match="batchnorm_eps is 1e-06 in the file"):
        load_params(other, tmp_path / "old.npz")


@pytest.mark.parametrize("optimizer", [SGD, Momentum])
def test_a_non_finite_loss_applies_no_update_where_updates_fold_into_products(backend, optimizer):
    """A batch large enough that SGD and Momentum fold their updates into the products."""
    net = MultiLayerNet(4, [16, 12], 2, seed=0, backend=backend)
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((4000, 4)), rng.integers(0, 2, 4000)
    opt = optimizer()
    net.train_step(backend.asarray(x), backend.asarray(t), opt)
    net.params["W3"][0, 0] = NAN
    before = _state(net, opt)
    with pytest.raises(NonFiniteLossError):
        net.train_step(backend.asarray(x), backend.asarray(t), opt)
    after = _state(net, opt)
    for key, value in before[0].items():
        numpy.testing.assert_array_equal(after[0][key], value, err_msg=key)

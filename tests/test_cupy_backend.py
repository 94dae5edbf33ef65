"""What only the cupy backend promises: data stays on the GPU, no hidden copies or syncs.

The rest of the suite runs on the cupy backend through the ``backend`` fixture.
"""

import numpy
import pytest

import fastbp

if "cupy" not in fastbp.available_backends():
    pytest.skip(f"cupy backend unavailable: {fastbp.backend_info()['cupy']['reason']}",
                allow_module_level=True)

import cupy  # noqa: E402
import cupyx  # noqa: E402

from fastbp.nets import TwoLayerNet  # noqa: E402
from fastbp.optim import SGD  # noqa: E402


def _data(n=64, d=20, c=5):
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


def test_params_live_on_the_gpu():
    net = TwoLayerNet(20, 10, 5, seed=0, backend="cupy")
    assert all(isinstance(p, cupy.ndarray) for p in net.params.values())


def test_numpy_input_is_refused_with_the_fix():
    net = TwoLayerNet(20, 10, 5, seed=0, backend="cupy")
    x, t = _data()
    with pytest.raises(TypeError, match=r"TwoLayerNet.train_step: .*fastbp.to_device\(x\)"):
        net.train_step(x, cupy.asarray(t), SGD(0.1))


def test_out_of_range_labels_are_caught():
    net = TwoLayerNet(20, 10, 5, seed=0, backend="cupy")
    x, t = _data()
    t[3] = 5
    before = net.params["W1"].copy()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        net.train_step(cupy.asarray(x), cupy.asarray(t), SGD(0.1))
    assert bool((net.params["W1"] == before).all())


def test_train_step_opting_out_of_the_checks_does_not_synchronise():
    net = TwoLayerNet(20, 10, 5, seed=0, backend="cupy")
    x, t = (fastbp.to_device(a, "cupy") for a in _data())
    net.train_step(x, t, SGD(0.1))  # compile the kernels first
    cupy.cuda.get_current_stream().synchronize()
    with cupyx.allow_synchronize(False):
        loss = net.train_step(x, t, SGD(0.1), check_labels=False, check_finite=False)
    assert isinstance(loss, cupy.ndarray) and loss.shape == ()


def test_device_round_trip():
    data = numpy.arange(6.0).reshape(2, 3)
    on_gpu = fastbp.to_device(data, "cupy")
    assert isinstance(on_gpu, cupy.ndarray)
    numpy.testing.assert_array_equal(fastbp.to_numpy(on_gpu), data)


def test_info_reports_the_gpu():
    info = fastbp.backend_info()["cupy"]
    assert info["available"] and info["gpu"] and info["cuda_runtime"]

"""What only the numba backend promises: the fused step, BLAS routing, threads, caching, no-JIT runs."""

import os
import pkgutil
import subprocess
import sys

import numpy
import pytest
from conftest import assert_close

import fastbp

if "numba" not in fastbp.available_backends():
    pytest.skip("numba backend not installed (pip install 'fastbp[numba]')", allow_module_level=True)

import numba  # noqa: E402

from fastbp.backends import numba_backend, numba_blas  # noqa: E402
from fastbp.backends.numba_kernels import batchnorm, dense, elementwise, fpmode, softmax, tiny, updates, whole  # noqa: E402
from fastbp.nets import MultiLayerNet  # noqa: E402
from fastbp.optim import SGD  # noqa: E402

NUMBA = fastbp.get_backend("numba")
#: every module of compiled kernels; a new kernel module goes here too
KERNEL_MODULES = (elementwise, dense, softmax, batchnorm, updates, tiny, whole, fpmode, numba_blas)


def _problem(sizes, batch, dtype, one_hot, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    labels = rng.integers(0, sizes[-1], batch)
    t = numpy.eye(sizes[-1], dtype=dtype)[labels] if one_hot else labels
    return x, t


@pytest.mark.parametrize("sizes, batch", [
    ((2, 8, 2), 200),           # the tiny path: one compiled call, no BLAS
    ((3, 6, 4), 50),            # the tiny path with more than two classes
    ((60, 40, 10), 64),         # BLAS path
    ((50, 30, 20, 10), 48),     # deeper than two layers
    ((4, 8, 64), 512),          # enough logits for the softmax to run its rows in parallel
])
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("one_hot", [False, True])
def test_fused_step_matches_reference(sizes, batch, activation, one_hot, dtype):
    x, t = _problem(sizes, batch, dtype, one_hot)
    nets = [MultiLayerNet(sizes[0], list(sizes[1:-1]), sizes[-1], activation=activation,
                          weight_init_std=0.3, seed=1, backend=name, dtype=dtype)
            for name in ("numba", "numpy")]
    for step in range(3):
        losses = [net.train_step(x, t, SGD(lr=0.5)) for net in nets]
        assert losses[0].dtype == numpy.dtype(dtype)
        assert_close(losses[0], losses[1], dtype, f"loss at step {step}")
    for key in nets[1].params:
        assert nets[0].params[key].dtype == numpy.dtype(dtype)
        assert_close(nets[0].params[key], nets[1].params[key], dtype, key)


def _count_products(monkeypatch):
    calls = []
    monkeypatch.setattr(numba_backend, "gemm",
                        lambda *a, **k: calls.append(1) or numba_blas.gemm(*a, **k))
    return calls


def test_every_product_of_a_step_goes_through_one_gemm(monkeypatch):
    """Five products for a two-layer step (the first layer's dx is skipped), all via one BLAS.

    A batch large enough that SGD folds into the products instead of running the
    whole-step kernel, which calls the same compiled gemm from inside.
    """
    calls = _count_products(monkeypatch)
    x, t = _problem((60, 40, 10), 2048, "float64", False)
    assert x.shape[0] * (60 * 40 + 40 + 40 * 10 + 10) > numba_backend._FOLD_ABOVE["sgd_update"]
    net = MultiLayerNet(60, [40], 10, seed=0, backend="numba")
    net.train_step(x, t, SGD(lr=0.1))
    assert len(calls) == 5
    assert whole._numpy_blas_gemm is numba_blas._numpy_blas_gemm


@pytest.mark.parametrize("sizes, batch, optimizer, options, kernel", [
    ((64, 100, 100, 10), 32, "adam", {}, True),     # the gradient kernel: a small net
    ((784, 100, 100, 10), 100, "adam", {}, True),   # the kernel: Adam cannot fold
    ((784, 100, 100, 10), 100, "momentum", {}, True),  # the kernel: cheaper than the fold here
    ((784, 256, 256, 10), 128, "momentum", {}, False),  # folds into the products instead
    ((784, 100, 100, 10), 100, "sgd", {}, False),       # folds: one product per weight
    ((784, 256, 256, 10), 128, "sgd", {"use_batchnorm": True}, True),  # BatchNorm: the kernel
    ((64, 100, 100, 10), 32, "adam", {"use_dropout": True}, True),  # dropout: the kernel too
    ((784, 100, 100, 10), 100, "sgd", {"use_dropout": True}, False),  # where SGD folds: composed
])
def test_which_path_a_step_takes(monkeypatch, sizes, batch, optimizer, options, kernel):
    from fastbp.optim import Adam, Momentum

    ran = []
    real = whole.mlp_gradient
    monkeypatch.setattr(whole, "mlp_gradient", lambda *a: ran.append(1) or real(*a))
    x, t = _problem(sizes, batch, "float64", False)
    net = MultiLayerNet(sizes[0], list(sizes[1:-1]), sizes[-1], seed=0, backend="numba", **options)
    net.train_step(x, t, {"adam": Adam, "momentum": Momentum, "sgd": SGD}[optimizer]())
    assert len(ran) == kernel


def test_claiming_the_parameters_cache_lines_changes_no_bit(dtype):
    """The claim before the update stores into every line of the parameters: each value stays
    as it was, to the bit (-0.0, infinities, a NaN's payload, subnormals)."""
    bits = numpy.dtype(f"i{numpy.dtype(dtype).itemsize}").type
    values = numpy.random.default_rng(0).standard_normal(1003).astype(dtype)
    values[::7] = numpy.finfo(dtype).smallest_subnormal
    values[-4:] = -0.0, numpy.inf, -numpy.inf, numpy.nan
    values.view(bits)[-1] |= 5  # a payload
    before = values.view(bits).copy()
    updates.claim_lines(values.view(bits), bits(0))
    numpy.testing.assert_array_equal(values.view(bits), before)


def _count_claims(monkeypatch):
    """A list that grows by one each time a step claims the parameters' cache lines."""
    claimed = []
    real = updates.claim_lines
    monkeypatch.setattr(updates, "claim_lines", lambda *a: claimed.append(1) or real(*a))
    return claimed


@pytest.mark.parametrize("sizes, batch, blas_threads, claims", [
    ((784, 100, 100, 10), 100, 2, True),  # the products leave half the lines on the other core
    ((784, 100, 100, 10), 100, 1, False),  # one BLAS thread: the lines are all here
    ((64, 100, 100, 10), 32, 2, False),    # mostly one-thread products: the lines are here
])
def test_which_steps_claim_the_parameters_lines_first(monkeypatch, dtype, sizes, batch,
                                                      blas_threads, claims):
    from threadpoolctl import threadpool_limits

    from fastbp.optim import Adam

    claimed = _count_claims(monkeypatch)
    x, t = _problem(sizes, batch, dtype, False)
    net = MultiLayerNet(sizes[0], list(sizes[1:-1]), sizes[-1], seed=0, backend="numba", dtype=dtype)
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        assert numba_blas.threads() == blas_threads
        net.train_step(x, t, Adam())
    assert len(claimed) == claims


def test_a_step_that_claims_the_lines_equals_one_that_does_not(monkeypatch, dtype):
    """With the claim forced on a small net, three Adam steps give the same parameters to the bit."""
    from threadpoolctl import threadpool_limits

    from fastbp.optim import Adam

    claimed = _count_claims(monkeypatch)
    x, t = _problem((50, 30, 20, 10), 48, dtype, False)
    nets = [MultiLayerNet(50, [30, 20], 10, seed=0, backend="numba", dtype=dtype) for _ in "ab"]
    for window, net in zip([(0, numpy.inf), (1, 0)], nets):
        monkeypatch.setattr(numba_backend, "_CLAIM_BYTES", window)
        optimizer = Adam(0.01)
        with threadpool_limits(limits=2, user_api="blas"):  # a one-core machine has one
            for _ in range(3):
                net.train_step(x, t, optimizer)
    assert len(claimed) == 3
    for key in nets[0].params:
        numpy.testing.assert_array_equal(nets[0].params[key], nets[1].params[key], err_msg=key)


def _dropout_nets(dtype, **options):
    """A numba net and its NumPy reference, seeded alike: the same weights and mask generators."""
    return [MultiLayerNet(6, [7, 5], 3, use_dropout=True, dropout_ratio=0.3, weight_decay_lambda=0.1,
                          seed=3, backend=b, dtype=dtype, **options) for b in ("numba", "numpy")]


def _assert_dropout_nets_agree(nets, dtype, what, noise=()):
    ours, ref = nets
    for key in ref.params:
        if key not in noise:
            assert_close(ours.params[key], ref.params[key], dtype, f"{key} {what}")
    for i in (1, 2):  # the masks the step used, kept by the layers as their own forward keeps them
        numpy.testing.assert_array_equal(ours.layers[f"Dropout{i}"].mask,
                                         ref.layers[f"Dropout{i}"].mask, err_msg=f"mask {i} {what}")


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("activation, use_batchnorm", [("relu", False), ("sigmoid", False),
                                                       ("relu", True), ("sigmoid", True)])
def test_dropout_steps_run_as_one_call_and_agree_with_the_reference(monkeypatch, dtype, optimizer,
                                                                    activation, use_batchnorm):
    """The kernel draws its masks from the layers' generators as ``Dropout.forward`` does, so the
    masks are the reference's to the bit and the training follows it, batch size changing."""
    from fastbp.optim import Adam, Momentum

    ran = []
    real = whole.mlp_gradient
    monkeypatch.setattr(whole, "mlp_gradient", lambda *a: ran.append(1) or real(*a))
    nets = _dropout_nets(dtype, activation=activation, use_batchnorm=use_batchnorm)
    make = {"sgd": lambda: SGD(0.1), "momentum": lambda: Momentum(0.05), "adam": lambda: Adam(0.01)}
    optimizers = [make[optimizer]() for _ in nets]
    # the biases before a BatchNorm have a true gradient of 0: rounding noise, left out
    noise = ("b1", "b2") if use_batchnorm else ()
    for step, batch in enumerate((10, 10, 4)):
        x, t = _problem((6, 7, 5, 3), batch, dtype, False, seed=step)
        losses = [net.train_step(x, t, opt) for net, opt in zip(nets, optimizers)]
        assert_close(losses[0], losses[1], dtype, f"loss {step + 1}")
        _assert_dropout_nets_agree(nets, dtype, f"after step {step + 1}", noise)
    assert len(ran) == 3
    # in training mode: the running means follow the noisy biases, the batch statistics do not
    x, _ = _problem((6, 7, 5, 3), 8, dtype, False, seed=9)
    assert_close(nets[0].predict(x, train_flg=True), nets[1].predict(x, train_flg=True), dtype,
                 "predict")


def test_a_refused_batch_draws_no_dropout_mask(dtype):
    """The NaN/inf test comes before the draws, as in the layered step: the refused batch
    leaves the generators where they were, and the next step's masks are the reference's."""
    from fastbp.nets import NonFiniteInputError
    from fastbp.optim import Adam

    nets, optimizers = _dropout_nets(dtype), [Adam(0.01), Adam(0.01)]
    x, t = _problem((6, 7, 5, 3), 10, dtype, False)
    bad = x.copy()
    bad[4, 2] = numpy.nan
    for net, opt in zip(nets, optimizers):
        state = net.layers["Dropout1"].rng.bit_generator.state
        with pytest.raises(NonFiniteInputError):
            net.train_step(bad, t, opt)
        assert net.layers["Dropout1"].rng.bit_generator.state == state
        net.train_step(x, t, opt)
    _assert_dropout_nets_agree(nets, dtype, "after a refused batch")


@pytest.mark.parametrize("case", ["fixed masks", "ratios differ"])
def test_dropout_the_kernel_cannot_honour_takes_the_layered_step(monkeypatch, dtype, case):
    """Fixed masks (``repeatable_training_passes``) and layers given different ratios: the
    layered step runs, which honours both, and the step still follows the reference."""
    from fastbp.optim import Adam

    ran = []
    real = whole.mlp_gradient
    monkeypatch.setattr(whole, "mlp_gradient", lambda *a: ran.append(1) or real(*a))
    nets, optimizers = _dropout_nets(dtype), [Adam(0.01), Adam(0.01)]
    x, t = _problem((6, 7, 5, 3), 10, dtype, False)
    for net, opt in zip(nets, optimizers):
        if case == "fixed masks":
            with net.repeatable_training_passes():
                net.train_step(x, t, opt)
                first = net.layers["Dropout1"].mask.copy()
                net.train_step(x, t, opt)
                numpy.testing.assert_array_equal(net.layers["Dropout1"].mask, first)
        else:
            net.layers["Dropout2"].dropout_ratio = 0.6
            net.train_step(x, t, opt)
    assert not ran
    _assert_dropout_nets_agree(nets, dtype, case)


def test_layer_products_also_use_the_one_gemm(monkeypatch):
    calls = _count_products(monkeypatch)
    x, t = _problem((60, 40, 10), 64, "float64", False)
    MultiLayerNet(60, [40], 10, seed=0, backend="numba").gradient(x, t)
    assert len(calls) == 5


def test_products_use_the_blas_behind_numpys_matmul():
    """The library the step's products go to is the one NumPy loaded for ``@``."""
    code = ("import numpy as np\nfrom threadpoolctl import threadpool_info\n"
            "numpys = [i['filepath'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
            "from fastbp.backends import numba_blas\n"
            "print(numpys == [numba_blas.numpy_openblas()], numba_blas.LIBRARY)")
    if numba_blas.numpy_openblas() is None:
        pytest.skip("this NumPy build's BLAS exports no CBLAS gemm: products use SciPy's")
    same, library = _run(code).split(" ", 1)
    assert same == "True"
    assert library.startswith("NumPy's OpenBLAS")


def _gemm_implementations():
    implementations = [pytest.param(numba_blas._scipy_gemm(), id="scipy")]
    path = numba_blas.numpy_openblas()
    if path:
        implementations.append(pytest.param(numba_blas._numpy_gemm(path), id="numpy"))
    return implementations


@pytest.mark.parametrize("gemm", _gemm_implementations())
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_writes_in_place_without_copies(gemm, trans_a, trans_b, dtype):
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((7, 5) if trans_a else (5, 7)).astype(dtype)
    b = rng.standard_normal((3, 7) if trans_b else (7, 3)).astype(dtype)
    c = rng.standard_normal((5, 3)).astype(dtype)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    expected = c - 0.5 * op_a.astype("float64") @ op_b.astype("float64")
    result = gemm(a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=-0.5, beta=1.0)
    assert result is c and c.dtype == numpy.dtype(dtype)
    numpy.testing.assert_allclose(c, expected, rtol=1e-12 if dtype == "float64" else 1e-5)


def test_results_do_not_depend_on_the_thread_count():
    """Large enough for the parallel loops; reductions are chunked in a fixed order."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with a single thread (NUMBA_NUM_THREADS=1)")
    x, t = _problem((300, 256, 64), 512, "float32", False)
    assert t.size * 64 >= softmax.PARALLEL_MIN  # the softmax runs its rows in parallel
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            net = MultiLayerNet(300, [256], 64, seed=0, backend="numba", dtype="float32")
            loss = net.train_step(x, t, SGD(lr=0.1))
            grads = net.gradient(x, t)
            results.append((loss, grads, net.params))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (loss1, grads1, params1), (loss2, grads2, params2) = results
    assert loss1 == loss2
    for key in params1:
        numpy.testing.assert_array_equal(params1[key], params2[key])
        numpy.testing.assert_array_equal(grads1[key], grads2[key])


def _dispatchers(module):
    """The compiled kernels ``module`` defines (not the helpers it imports)."""
    return [obj for obj in vars(module).values()
            if isinstance(obj, numba.core.registry.CPUDispatcher)
            and obj.py_func.__module__ == module.__name__]


def test_every_kernel_module_is_listed():
    """KERNEL_MODULES holds every module of the kernels package, so the checks below see them all."""
    from fastbp.backends import numba_kernels

    names = {f"{numba_kernels.__name__}.{m.name}" for m in pkgutil.iter_modules(numba_kernels.__path__)}
    assert names == {m.__name__ for m in KERNEL_MODULES if m is not numba_blas}
    assert all(_dispatchers(m) for m in KERNEL_MODULES)
    assert not [obj for obj in vars(numba_kernels).values()
                if isinstance(obj, numba.core.registry.CPUDispatcher)]  # nothing re-exported


def test_every_kernel_is_cached():
    dispatchers = [d for module in KERNEL_MODULES for d in _dispatchers(module)]
    assert len(dispatchers) > 10
    assert all(type(d._cache).__name__ == "FunctionCache" for d in dispatchers)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True).stdout


def test_cache_honours_numba_cache_dir(tmp_path):
    code = ("import numpy as np, fastbp\nfrom fastbp.nets import TwoLayerNet\n"
            "from fastbp.optim import SGD\n"
            "net = TwoLayerNet(2, 8, 2, seed=0, backend='numba')\n"
            "net.train_step(np.ones((4, 2)), np.array([0, 1, 0, 1]), SGD(0.1))\n")
    _run(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert any(p.suffix == ".nbi" for p in tmp_path.rglob("*"))


def test_threading_layer_choice():
    """The default is the sleeping work queue; a user's explicit choice is kept."""
    code = "import fastbp, numba; fastbp.get_backend('numba'); print(numba.config.THREADING_LAYER)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert out.strip() == "workqueue"
    assert _run(code, NUMBA_THREADING_LAYER="safe").strip() == "safe"


def test_info_reports_numba_details():
    info = NUMBA.info()
    assert info["numba"] == numba.__version__
    assert info["threads"] >= 1 and info["threading_layer"] and info["cache_dir"]


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="already without JIT")
def test_suite_passes_without_jit():
    """The kernels are correct Python too: the numba-backend tests pass with NUMBA_DISABLE_JIT=1.

    Without the JIT no FTZ/DAZ mode is set, so only here do the subnormal tests see
    the kernels' own flush (compiled, the mode would flush for them)."""
    tests = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "numba",
         *(os.path.join(tests, name) for name in ("test_hot_paths.py", "test_nets.py",
                                                  "test_layers.py", "test_subnormals.py"))],
        capture_output=True, text=True, env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


_FLOAT32_PROBE = """
import re, numpy as np, numba, fastbp
from fastbp.nets import MultiLayerNet
from fastbp.optim import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop
from fastbp.backends.numba_kernels import batchnorm, dense, elementwise, softmax, tiny, updates, whole
for sizes, batch, activation in [((2, 8, 2), 50, "relu"), ((2, 8, 2), 50, "sigmoid"),
                                 ((3, 6, 4), 50, "relu"), ((60, 40, 10), 64, "relu"),
                                 ((60, 40, 10), 64, "sigmoid"), ((4, 8, 64), 512, "relu")]:
    net = MultiLayerNet(sizes[0], [sizes[1]], sizes[2], activation=activation, seed=0,
                        backend="numba", dtype="float32")
    x = np.ones((batch, sizes[0]), np.float32)
    t = np.arange(batch) % sizes[-1]
    net.train_step(x, t, SGD(0.1)); net.gradient(x, t)
    for optimizer in (Adam(), Momentum(), Nesterov(), AdaGrad(), RMSprop()):
        net.train_step(x, t, optimizer)
    net.train_step(x, np.eye(sizes[-1], dtype=np.float32)[t], SGD(0.1))
bn = MultiLayerNet(6, [5], 3, use_batchnorm=True, seed=0, backend="numba", dtype="float32")
bn.train_step(np.ones((8, 6), np.float32), np.arange(8) % 3, Adam()); bn.predict(np.ones((8, 6), np.float32))
for rows in (8, 520):  # the layers' loss, serial and row-parallel
    fastbp.get_backend("numba").softmax_cross_entropy(np.ones((rows, 64), np.float32),
                                                      np.arange(rows) % 64)
for module in (elementwise, dense, softmax, batchnorm, updates, tiny, whole):
    kernels = {name: obj for name, obj in vars(module).items()  # defined here, not imported
               if isinstance(obj, numba.core.registry.CPUDispatcher)
               and obj.py_func.__module__ == module.__name__}
    for name, kernel in kernels.items():
        for sig in kernel.signatures:
            if any(getattr(arg, "dtype", None) == numba.float32 for arg in sig):
                ir = kernel.inspect_llvm(sig)
                print(name, len(re.findall(r"= (?:fadd|fsub|fmul|fdiv)(?: \\w+)* float ", ir)),
                      len(re.findall(r"= (?:fadd|fsub|fmul|fdiv)(?: \\w+)* double ", ir)))
"""


def test_float32_kernels_do_no_float64_arithmetic(tmp_path):
    """Compiled afresh (cached code cannot be inspected), no float32 kernel computes in float64."""
    rows = [line.split() for line in _run(_FLOAT32_PROBE, NUMBA_CACHE_DIR=str(tmp_path)).splitlines()]
    arithmetic = {"_softmax_xent_serial", "_softmax_xent_parallel", "tiny_mlp_sgd_step",
                  "act_backward_col_sums", "bias_act_forward", "sgd", "momentum",
                  "nesterov", "adagrad", "rmsprop", "adam",
                  "batchnorm_forward", "batchnorm_backward", "mlp_gradient", "all_finite"}
    assert arithmetic <= {name for name, _, _ in rows}
    assert all(int(float_ops) > 0 for name, float_ops, _ in rows if name in arithmetic)  # seen
    assert [name for name, _, double_ops in rows if int(double_ops)] == []


def test_fastbps_passes_treat_subnormals_as_zero_and_restore_the_mode():
    """FTZ/DAZ is set around the update passes only: the user's (and BLAS's) mode is kept."""
    if not fpmode.X86:
        pytest.skip("FTZ/DAZ is an x86 MXCSR setting")
    before = fpmode.read()
    assert not before & fpmode.FTZ_DAZ
    tiny = numpy.finfo(numpy.float32).tiny
    param = numpy.zeros(4, numpy.float32)
    NUMBA.sgd_update(param, numpy.full(4, tiny / 4, numpy.float32), 1.0)
    numpy.testing.assert_array_equal(param, 0)  # the subnormal gradient read as 0
    NUMBA.sgd_update(param, numpy.full(4, tiny / 4, numpy.float32), 2.0 ** 40)
    numpy.testing.assert_array_equal(param, 0)  # read as 0 (DAZ), not only a result flushed (FTZ)
    reference = numpy.zeros(4, numpy.float32)
    fastbp.get_backend("numpy").sgd_update(reference, numpy.full(4, tiny / 4, numpy.float32), 1.0)
    assert (reference != 0).all()  # NumPy itself computes with subnormals
    x, t = _problem((60, 40, 10), 64, "float32", False)
    MultiLayerNet(60, [40], 10, seed=0, backend="numba", dtype="float32").train_step(x, t, SGD(0.1))
    assert fpmode.read() == before
    assert numpy.float32(tiny) / numpy.float32(4) != 0  # and this process still has subnormals

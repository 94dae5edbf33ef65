"""The benchmark suites' logic: baselines compute the right thing, timers time the right way.

No timing asserts: only what a measurement is made of.
"""

import json
import os
import subprocess
import sys
import time

import numpy
import pytest

import fastbp
from fastbp.benchmarks import command, contenders, gradients, kernels, textbook, train_step
from fastbp.benchmarks.contenders import Problem, Shape
from fastbp.benchmarks.timing import Contender, OtherLoad, interleaved
from fastbp.cli import build_parser
from fastbp.gradcheck import rel_error
from fastbp.nets import TwoLayerNet
from fastbp.optim import SGD

SMALL = Shape(20, 16, 5, 32)


def _batch(dtype="float64"):
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((SMALL.batch, SMALL.n_in)).astype(dtype), rng.integers(0, 5, 32)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_textbook_gradients_equal_fastbp_numpy(dtype, tol):
    net = TwoLayerNet(20, 16, 5, weight_init_std=0.5, seed=0, backend="numpy", dtype=dtype)
    book = textbook.TextbookNet({k: v.copy() for k, v in net.params.items()})
    x, t = _batch(dtype)
    expected = net.gradient(x, t)
    for key, grad in book.gradient(x, t).items():
        assert grad.dtype == numpy.dtype(dtype)
        assert rel_error(grad, expected[key]) <= tol, key


def test_textbook_step_equals_fastbp_numpy_step():
    net = TwoLayerNet(20, 16, 5, weight_init_std=0.5, seed=0, backend="numpy")
    book = textbook.TextbookNet(net.params)
    x, t = _batch()
    book.train_step(x, t, textbook.SGD(0.1))
    net.train_step(x, t, SGD(0.1))
    for key, value in net.params.items():
        assert rel_error(book.params[key], value) <= 1e-12, key


def test_textbook_affine_computes_the_unused_first_dx():
    """The baseline does the textbook's six products: dx of the first layer included."""
    book = textbook.TextbookNet(TwoLayerNet(20, 16, 5, seed=0).params)
    x, t = _batch()
    book.gradient(x, t)
    first = book.layers["Affine1"]
    assert first.backward(numpy.ones((32, 16))).shape == x.shape


def test_floor_computes_the_five_products():
    rng = numpy.random.default_rng(1)
    x, W1, W2, dy = (rng.standard_normal(s) for s in [(8, 6), (6, 4), (4, 3), (8, 3)])
    h, out, dW2, dh, dW1 = contenders.step_products([x], [W1, W2], dy)()
    numpy.testing.assert_allclose(h, x @ W1)
    numpy.testing.assert_allclose(out, (x @ W1) @ W2)
    numpy.testing.assert_allclose(dW2, (x @ W1).T @ dy)
    numpy.testing.assert_allclose(dh, dy @ W2.T)
    numpy.testing.assert_allclose(dW1, x.T @ (dy @ W2.T))


def test_cpu_contenders_do_the_same_step():
    """From the same start, every contender's second step sees the same loss."""
    problem = Problem(SMALL, "float64")
    skipped, losses = {}, {}
    names = [n for n in contenders.CPU_MAKERS if n != "floor"]
    for step in contenders.make_contenders(problem, names, skipped):
        losses[step.name] = float(step.fn())  # the makers ran the first step
    assert set(losses) | set(skipped) == set(names)
    reference = losses.pop("fastbp-numpy")
    book = losses.pop("textbook")
    assert abs(book - reference) <= 1e-5 * reference  # the textbook's log(y + 1e-7)
    for name, loss in losses.items():
        assert abs(loss - reference) <= 1e-10 * reference, name
    first = float(TwoLayerNet(*SMALL[:3], weight_init_std=0.01, seed=0).loss(problem.x,
                                                                             problem.t))
    assert abs(first - reference) > 1e-6 * reference  # the first step did update


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_fit_exponent_recovers_a_known_exponent(exponent):
    rng = numpy.random.default_rng(0)
    sizes = numpy.logspace(1, 6, 12)
    times = 3e-6 * sizes ** exponent * numpy.exp(rng.normal(0, 0.05, sizes.size))
    assert gradients.fit_exponent(sizes, times) == pytest.approx(exponent, abs=0.05)


def test_interleaved_visits_contenders_in_turn_and_returns_positive_medians():
    calls = []
    names = ["A", "B", "C"]
    racers = [Contender(n, lambda n=n: calls.append(n)) for n in names]
    rounds = 4
    timings = interleaved(racers, rounds=rounds, round_s=0.002, pause_s=0)
    assert list(timings) == names
    assert all(t.median > 0 and len(t.samples) == rounds for t in timings.values())
    # each contender's warm-up and calibration run back to back, then the rounds alternate
    visits = [n for i, n in enumerate(calls) if i == 0 or calls[i - 1] != n]
    assert visits == names * (rounds + 1)


def test_interleaved_times_each_call_after_its_untimed_before():
    log = []
    racer = Contender("step", lambda: log.append("fn"), before=lambda: log.append("before"))
    timing = interleaved([racer], rounds=2, round_s=0.002, pause_s=0)["step"]
    assert timing.median > 0
    assert log[-2 * timing.calls_per_round:] == ["before", "fn"] * timing.calls_per_round


def test_interleaved_refuses_duplicate_names():
    with pytest.raises(ValueError, match="two contenders are named 'A'"):
        interleaved([Contender("A", int), Contender("A", int)], rounds=1)


def test_other_load_is_a_share_of_the_machine():
    watch = OtherLoad()
    time.sleep(0.05)
    share = watch.share()
    if sys.platform.startswith("linux"):  # /proc/stat is read there
        assert share is not None
    assert share is None or 0.0 <= share <= 1.0


def test_other_load_leaves_out_this_process(monkeypatch):
    """Busy CPU seconds minus this process's own, over wall time times the CPUs."""
    samples = iter([(10.0, 2.0, 100.0), (13.0, 3.0, 101.0)])  # (busy, own, wall)
    monkeypatch.setattr(OtherLoad, "_sample", staticmethod(lambda: next(samples)))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert OtherLoad().share() == pytest.approx((3.0 - 1.0) / (1.0 * 4))


def test_train_step_table_shows_ratios_to_numba_and_what_was_skipped():
    timing = {name: {"median_s": t, "spread": 0.1} for name, t in
              (("textbook", 4e-3), ("fastbp-numba", 2e-3), ("floor", 1e-3))}
    group = {"device": "cpu", "shape": "784-50-10 B=100", "dtype": "float32",
             "hero": "fastbp-numba", "timings": timing,
             "speedup": {"textbook": 2.0, "fastbp-numba": 1.0, "floor": 0.5},
             "skipped": {"jax": "JAX is not installed"}}
    text = train_step.table({"groups": [group], "memory": [], "blas_independence": [],
                             "blas": []})
    assert "skipped jax: JAX is not installed" in text
    row = next(line for line in text.splitlines() if line.startswith("784-50-10") and "x" in line)
    assert row.split()[-2:] == ["2x", "2x"]  # 2x faster than the textbook, twice the floor


def test_gradient_problems_keep_relu_inputs_off_the_kink():
    net, x, t = gradients.make_problem(Shape(784, 30, 10, 3), fastbp.get_backend())
    z = x @ net.params["W1"] + net.params["b1"]
    assert numpy.abs(z).min() >= gradients.KINK_MARGIN


def test_update_arguments_come_from_the_signature():
    class Fake:
        def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, t, *, scale, out=None):
            self.seen = (param, grad, m, v, lr, beta1, beta2, eps, t, scale, out)

        def asarray(self, x, dtype=None):
            return numpy.asarray(x, dtype=dtype)

    fake = Fake()
    assert kernels.extra_updates(fake) == ["adam_update"]
    kernels.update_call(fake, "adam_update", numpy.zeros((3, 2), numpy.float32))()
    param, grad, m, v, lr, beta1, beta2, eps, t, scale, out = fake.seen
    assert all(a.shape == (3, 2) and a.dtype == numpy.float32 and (a > 0).all()
               for a in (param, grad, m, v, scale))
    assert (lr, beta1, beta2, eps, t, out) == (1e-6, 0.9, 0.999, 1e-8, 1, None)


@pytest.mark.parametrize("argv", [
    ["bench"],
    ["bench", "--suite", "kernels", "--quick", "--backend", "numpy", "--dtype", "float32",
     "--dtype", "float64", "--json", "out.json", "--plot", "docs", "--keep-blas-env"],
])
def test_bench_command_line_reproduces_its_arguments(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    assert parser.parse_args(["bench", *command._argv(args)]) == args


def test_bench_kernels_quick_writes_json_with_the_machine(tmp_path):
    """Also: a pinned OpenBLAS core type is removed by restarting the run without it."""
    path = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_CORETYPE"] = "Haswell"
    result = subprocess.run([sys.executable, "-m", "fastbp", "bench", "--suite", "kernels",
                             "--quick", "--backend", "numpy", "--dtype", "float32",
                             "--json", str(path)], check=False, capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert "Kernels:" in result.stdout and "affine_forward" in result.stdout
    assert "restarting without OPENBLAS_CORETYPE=Haswell" in result.stderr
    record = json.loads(path.read_text())
    machine = record["machine"]
    assert machine["cpu"]["model"] and machine["cpu"]["cores"] >= 1 and machine["blas"]
    assert isinstance(machine["gpu"], list) and machine["packages"]["numpy"]
    assert "OPENBLAS_CORETYPE" not in machine["environment"]
    assert record["blas_env"]["unset"] == {"OPENBLAS_CORETYPE": "Haswell"}
    assert set(record["other_load"]) == {"kernels"}
    rows = record["results"]["kernels"]["rows"]
    assert {r["kernel"] for r in rows} >= set(kernels.HOT_PATHS)
    assert all(t["median_s"] > 0 for r in rows for t in r["timings"].values())


def test_bad_suite_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "-m", "fastbp", "bench", "--suite", "everything"],
                            check=False, capture_output=True, text=True)
    assert result.returncode == 2
    assert "argument --suite: invalid choice: 'everything'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_subnormal_adam_case_squares_its_gradients_into_subnormals(dtype):
    from fastbp.benchmarks.kernels import SUBNORMAL_PARAMS, adam_calls

    be = fastbp.get_backend("numpy")
    calls = adam_calls(be, dtype, n=64)
    assert set(calls) == {"ordinary", "subnormal"}
    grad = calls["subnormal"].__defaults__[1]
    squares = grad * grad
    tiny = numpy.finfo(dtype).tiny
    assert ((squares != 0) & (abs(squares) < tiny)).mean() > 0.9
    assert SUBNORMAL_PARAMS > 10_000

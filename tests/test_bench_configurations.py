"""The configurations suite: every contender does the same steps, the floor its products.

Nothing here is timed.  The rows run at reduced sizes (same depth, optimizer,
weight decay and BatchNorm), which keeps the suite quick; the arithmetic is
the same code at any size.
"""

import numpy
import pytest

import fastbp.optim
from fastbp.benchmarks import SUITES, configurations, contenders
from fastbp.benchmarks.contenders import Config, Problem, Shape, cycling, step_products
from fastbp.benchmarks.timing import alternated
from fastbp.gradcheck import rel_error

STEPS = 4  # with a pool of 3 the contenders wrap around it
ROWS = [c._replace(sizes=tuple(min(s, 24) for s in c.sizes), batch=min(c.batch, 16), pool=3)
        for c in configurations.CONFIGS["full"]]
IDS = [c.label for c in configurations.CONFIGS["full"]]


def _reference(problem):
    """fastbp's numpy backend stepped over the cycled pool by hand: losses and parameters."""
    net, opt = problem.net("numpy"), problem.config.optimizer_from(fastbp.optim)
    losses = [float(net.train_step(*problem.batches[k % problem.config.pool], opt))
              for k in range(STEPS + 1)]
    return losses, {k: numpy.array(v) for k, v in net.params.items()}


def _assert_same_params(config, params, expected):
    assert set(params) == set(expected)
    for key, value in params.items():
        if config.batchnorm and key[:1] == "b" and key[1:].isdigit() and int(key[1:]) < config.n_layers:
            # right before a BatchNorm: the true gradient is zero, what moves it is rounding
            assert numpy.abs(value - expected[key]).max() <= 1e-10, key
        else:
            assert rel_error(value, expected[key]) <= 1e-10, key


@pytest.mark.parametrize("name", ["fastbp-numpy", "textbook", "torch"])
@pytest.mark.parametrize("config", ROWS, ids=IDS)
def test_contenders_do_the_same_steps_as_fastbp_numpy(config, name):
    if name == "torch":
        pytest.importorskip("torch")
    if config.dropout is not None and name != "fastbp-numpy":
        # each contender draws its own masks: with a ratio of 0 their dropout layers keep every
        # unit, and all but the draws is compared
        config = config._replace(dropout=0.0)
    problem = Problem(config, "float64")
    losses, params = _reference(problem)
    step = contenders.CPU_MAKERS[name](problem)  # the maker ran step 0
    seen = [float(step.fn()) for _ in range(STEPS)]
    _assert_same_params(config, step.params(), params)
    for k, loss in enumerate(seen, start=1):
        if name == "textbook":  # its -log(y + 1e-7) lowers the value, not the gradient
            assert 0 <= losses[k] - loss <= 1e-4 * losses[k], k
        else:  # torch's included: the contender adds the decay term torch.optim leaves out
            assert abs(loss - losses[k]) <= 1e-10 * losses[k], k
    assert abs(losses[STEPS] - losses[STEPS % config.pool]) > 1e-6  # the weights did move


def test_the_textbook_dropout_drops_its_ratio_of_units_and_their_gradients():
    from fastbp.benchmarks.textbook import Dropout

    layer = Dropout(0.3, numpy.random.default_rng(0))
    out = layer.forward(numpy.ones((200, 100)))
    assert 0.28 < (out == 0).mean() < 0.32
    numpy.testing.assert_array_equal(layer.backward(numpy.full((200, 100), 2.0)), 2 * out)
    numpy.testing.assert_array_equal(layer.forward(numpy.ones((2, 3)), train_flg=False), 0.7)


def test_the_pool_holds_distinct_batches_cycled_in_order():
    problem = Problem(ROWS[0], "float64")
    assert len(problem.batches) == 3
    assert len({x.tobytes() for x, _ in problem.batches}) == 3
    assert all(x.dtype == numpy.float64 and t.shape == (16,) for x, t in problem.batches)
    batch = cycling(problem.batches)
    assert [batch() for _ in range(7)] == [problem.batches[k % 3] for k in range(7)]
    assert problem.x is problem.batches[0][0]


def test_a_shape_is_the_plain_sgd_config_with_one_batch():
    shape = Shape(20, 16, 5, 32)
    assert shape.config == Config((20, 16, 5), 32, "sgd", contenders.LR, 0.0, False, 0.01, 1)
    assert shape.n_params == 20 * 16 + 16 + 16 * 5 + 5
    problem = Problem(shape, "float32")
    assert len(problem.batches) == 1 and problem.x.dtype == numpy.float32


def test_config_label_and_parameter_count():
    config = Config((784, 100, 100, 10), 100, "adam", batchnorm=True)
    assert config.label == "784-100-100-10 Adam + BatchNorm, B=100"
    net = Problem(config._replace(sizes=(7, 5, 4, 3), batch=2), "float64").net("numpy")
    small = config._replace(sizes=(7, 5, 4, 3))
    assert small.n_params == sum(v.size for v in net.params.values())
    assert Config((784, 100, 10), 100, "momentum", weight_decay=1e-4).label == \
        "784-100-10 Momentum + weight decay 0.0001, B=100"


class _CountingXp:
    """NumPy's ``empty`` and ``matmul``, with every product's operands recorded."""

    def __init__(self):
        self.calls = []

    empty = staticmethod(numpy.empty)

    def matmul(self, a, b, out):
        self.calls.append((a, b))
        return numpy.matmul(a, b, out=out)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_floor_does_the_step_products_and_cycles_the_pool(layers):
    rng = numpy.random.default_rng(1)
    sizes = [6, 5, 4, 3][:layers + 1]
    xs = [rng.standard_normal((8, sizes[0])) for _ in range(2)]
    weights = [rng.standard_normal(shape) for shape in zip(sizes[:-1], sizes[1:])]
    dy = rng.standard_normal((8, sizes[-1]))
    xp = _CountingXp()
    products = step_products(xs, weights, dy, xp=xp)
    results = [products() for _ in range(3)]
    per_step = 3 * layers - 1  # L forward, L weight gradients, L - 1 input gradients
    assert len(xp.calls) == 3 * per_step
    assert [xp.calls[i * per_step][0] is xs[i % 2] for i in range(3)] == [True] * 3
    # the values: forward a_i, then dW_L, d_{L-1}, dW_{L-1}, ..., dW_1 (for 2 layers h, out, dW2, dh, dW1)
    x, out = xs[0], results[2]
    acts = [x]
    for W in weights:
        acts.append(acts[-1] @ W)
    expected, d = list(acts[1:]), dy
    for i in reversed(range(layers)):
        expected.append(acts[i].T @ d)
        if i:
            d = d @ weights[i].T
            expected.append(d)
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        numpy.testing.assert_allclose(got, want, rtol=1e-12)


def test_the_floor_contender_counts_a_configs_products():
    problem = Problem(ROWS[4], "float64")  # 3 weight matrices
    xs, weights, dy = contenders._floor_operands(problem)
    assert len(xs) == 3 and len(weights) == 3 and dy.shape == (16, 10)
    assert len(contenders.floor(problem).fn()) == 8


def test_trainer_epochs_and_the_torch_loop_train_the_same():
    pytest.importorskip("torch")
    rng = numpy.random.default_rng(0)
    x, t = rng.random((70, 64)), rng.integers(0, 10, 70)  # two full batches of 32 and one of 6
    problem = Problem(configurations.DEFAULT_TRAIN, "float64")
    trainer, trainer_params = configurations.trainer_epochs("numpy", problem, x, t)
    loop, loop_params = configurations.torch_epochs(problem, x, t)
    for i in range(2):
        assert trainer(i) > 0 and loop(i) > 0
    _assert_same_params(problem.config, loop_params(), trainer_params())
    moved = trainer_params()["W1"] - problem.params["W1"]
    assert numpy.abs(moved).max() > 1e-4


def test_alternated_visits_whole_calls_in_turn_with_the_same_index():
    log = []
    runs = {n: (lambda i, n=n: log.append((n, i)) or 0.5) for n in "AB"}
    timings = alternated(runs, rounds=2, warmup=1, pause_s=0)
    assert log == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    assert [t.samples for t in timings.values()] == [[0.5, 0.5], [0.5, 0.5]]


def test_missed_targets_name_each_one_missed():
    row = configurations.CONFIGS["full"][0]  # <= 1.5x the floor, >= 3x textbook, >= 6x torch
    assert configurations.missed_targets(row, {"floor": 1 / 1.4, "textbook": 3.5, "torch": 7}) == []
    missed = configurations.missed_targets(row, {"floor": 1 / 1.6, "textbook": 3.5, "torch": 2})
    assert missed == ["/ floor <= 1.5", "vs torch >= 6"]
    assert configurations.missed_targets(row, {"floor": 0.9}) == []  # torch not measured
    assert configurations.unmeasured_targets(row, {"floor": 0.9}) == ["textbook", "torch"]
    assert configurations.missed_targets(ROWS[0], {"floor": 0.5}) is None  # not a target row


def _group(config, dtype, medians, skipped=None):
    hero = min((n for n in medians if n.startswith("fastbp-")), key=medians.get)
    speedup = {n: t / medians[hero] for n, t in medians.items()}
    return {"device": "cpu", "shape": config.label, "dtype": dtype, "hero": hero,
            "timings": {n: {"median_s": t, "spread": 0.05} for n, t in medians.items()},
            "speedup": speedup, "skipped": skipped or {}, "config": config._asdict(),
            "missed": configurations.missed_targets(config, speedup),
            "unmeasured": configurations.unmeasured_targets(config, speedup)}


def test_table_shows_ratios_to_the_fastest_backend_targets_and_skips():
    row = configurations.CONFIGS["full"][1]
    groups = [_group(row, "float32", {"textbook": 4e-3, "fastbp-numpy": 3e-3, "fastbp-numba": 1e-3,
                                      "floor": 0.8e-3}, {"torch": "PyTorch is not installed"})]
    epochs = {"dataset": "digits", "config": configurations.DEFAULT_TRAIN._asdict(), "rows": [
        {"dtype": "float64", "samples": 1437, "fastest": "fastbp-numba",
         "timings": {"fastbp-numpy": {"median_s": 0.06}, "fastbp-numba": {"median_s": 0.02}},
         "speedup": {"fastbp-numpy": 3.0, "fastbp-numba": 1.0},
         "skipped": {"torch": "PyTorch is not installed"}}]}
    text = configurations.table({"groups": groups, "epochs": epochs, "blas": []})
    assert "skipped torch: PyTorch is not installed" in text
    ratio_row = next(line for line in text.splitlines()
                     if line.startswith(row.label) and "fastbp-numba" in line)
    assert ratio_row.split()[-8:] == ["fastbp-numba", "1.25x", "4x", "-", "vs", "torch", "not",
                                      "measured"]  # skipped: not a target met
    epoch_row = next(line for line in text.splitlines() if line.startswith("float64"))
    assert epoch_row.split()[-3:] == ["fastbp-numba", "3x", "1x"]
    assert "1,437 samples per epoch" in text and "cycled from a pool of 8" in text


def test_table_says_why_the_epochs_were_skipped():
    epochs = {"dataset": "digits", "config": configurations.DEFAULT_TRAIN._asdict(), "rows": [],
              "skipped": "load_dataset('digits') reads the digits that scikit-learn ships"}
    text = configurations.table({"groups": [], "epochs": epochs, "blas": []})
    assert "skipped: load_dataset('digits')" in text


def test_the_suite_is_registered_and_jax_declines_these_rows():
    assert SUITES["configurations"] == "configurations"
    assert configurations.contender_names(["numpy"]) == ["textbook", "fastbp-numpy", "torch",
                                                         "floor"]
    with pytest.raises(contenders.Unavailable, match="plain SGD on one hidden layer"):
        contenders.jax_step(Problem(ROWS[0], "float64"))

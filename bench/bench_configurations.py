"""The train step of each configuration per contender and dtype, and the Trainer's epoch.

Groups: ``configuration <row> <dtype>`` (fastbp per CPU backend, textbook,
torch, floor; batches cycled from the suite's pool) and ``trainer-epoch
digits <dtype>`` (one epoch per call, evaluation included, for fastbp per
CPU backend and the PyTorch loop).
"""

import itertools

import pytest
from conftest import mode, run

import fastbp
from fastbp.benchmarks import configurations
from fastbp.benchmarks.contenders import CPU_MAKERS, Problem, Unavailable

DTYPES = ("float64", "float32")
EPOCH_CONTENDERS = ("fastbp-numpy", "fastbp-numba", "torch")


def pytest_generate_tests(metafunc):
    if "config" in metafunc.fixturenames:
        cases = [(c, n) for c in configurations.CONFIGS[mode(metafunc.config)]
                 for n in configurations.CONTENDERS]
        metafunc.parametrize("config, contender", cases,
                             ids=[f"{c.label.replace(' ', '')}-{n}" for c, n in cases])


@pytest.mark.parametrize("dtype", DTYPES)
def test_configuration(benchmark, config, contender, dtype):
    try:
        step = CPU_MAKERS[contender](Problem(config, dtype))
    except Unavailable as exc:
        pytest.skip(str(exc))
    benchmark.group = f"configuration {config.label} {dtype}"
    run(benchmark, step)


@pytest.fixture(scope="module")
def digits():
    try:
        return configurations.load_epoch_data()
    except ImportError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("contender", EPOCH_CONTENDERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_trainer_epoch(benchmark, digits, contender, dtype):
    problem = Problem(configurations.DEFAULT_TRAIN, dtype)
    x, t = digits
    try:
        if contender == "torch":
            epoch, _ = configurations.torch_epochs(problem, x, t)
        else:
            epoch, _ = configurations.trainer_epochs(fastbp.get_backend(contender[7:]), problem,
                                                     x, t)
    except (Unavailable, ImportError) as exc:
        pytest.skip(str(exc))
    seeds = itertools.count()
    epoch(next(seeds))  # warm-up: compilation stays out of the timing
    benchmark.group = f"trainer-epoch {configurations.EPOCH_DATASET} {dtype}"
    benchmark(lambda: epoch(next(seeds)))

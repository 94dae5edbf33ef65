"""One SGD train step per shape, dtype and contender; groups: ``train-step <shape> <dtype>``."""

import pytest
from conftest import mode, run

from fastbp.benchmarks.contenders import CPU_MAKERS, GPU_MAKERS, Problem, Unavailable
from fastbp.benchmarks.train_step import GPU_SHAPES, SHAPES, gpu_present

DTYPES = ("float64", "float32")


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        cases = [(s, name) for s in SHAPES[mode(metafunc.config)]
                 for name in (*CPU_MAKERS, *GPU_MAKERS)]
        cases += [(s, name) for s in GPU_SHAPES for name in GPU_MAKERS]
        metafunc.parametrize("shape, contender", cases,
                             ids=[f"{s.label.replace(' ', '-')}-{n}" for s, n in cases])


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step(benchmark, shape, contender, dtype):
    if contender in GPU_MAKERS and not gpu_present():
        pytest.skip("no CUDA device")
    try:
        step = {**CPU_MAKERS, **GPU_MAKERS}[contender](Problem(shape, dtype))
    except Unavailable as exc:
        pytest.skip(str(exc))
    benchmark.group = f"train-step {shape.label} {dtype}"
    run(benchmark, step)

"""Backprop and numerical gradients of the TwoLayerNet; groups: ``gradient <net> B=<batch>``.

The numerical gradient is timed in full only where it is cheap (P at most
``NUMERICAL_MAX_PARAMS``); ``fastbp bench --suite gradients`` extrapolates the
large nets from samples.
"""

import pytest
from conftest import mode

import fastbp
from fastbp.benchmarks import gradients

NUMERICAL_MAX_PARAMS = 10_000


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        m = mode(metafunc.config)
        cases = [s for b in gradients.BATCHES[m] for s in gradients.shapes(b, m)]
        metafunc.parametrize("shape", cases, ids=[s.label.replace(" ", "-") for s in cases])


@pytest.fixture(params=fastbp.available_backends())
def backend(request):
    return fastbp.get_backend(request.param)


def test_backprop(benchmark, backend, shape):
    net, x, t = gradients.make_problem(shape, backend)
    benchmark.group = f"gradient {shape.label}"
    benchmark(net.gradient, x, t)


def test_numerical(benchmark, backend, shape):
    if shape.n_params > NUMERICAL_MAX_PARAMS:
        pytest.skip(f"P = {shape.n_params:,}: too slow in full (fastbp bench extrapolates it)")
    net, x, t = gradients.make_problem(shape, backend)
    benchmark.group = f"gradient {shape.label}"
    benchmark.pedantic(net.numerical_gradient, args=(x, t), rounds=3, iterations=1)

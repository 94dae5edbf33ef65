"""Hot paths per backend and dtype against the plain NumPy expression.

Groups: ``kernel <name> <size> <dtype>``; the contender ``numpy-expr`` is the
textbook code.
"""

import functools

import pytest
from conftest import mode, run

import fastbp
from fastbp.benchmarks import kernels
from fastbp.benchmarks.timing import Contender

DTYPES = ("float64", "float32")
BACKENDS = fastbp.available_backends()


@functools.cache
def _calls(contender, size, dtype):
    data = kernels.make_data(size, dtype)
    if contender == kernels.PLAIN:
        return kernels.plain_calls(data)
    return kernels.backend_calls(fastbp.get_backend(contender), data)


def pytest_generate_tests(metafunc):
    if "kernel" in metafunc.fixturenames:
        extra = sorted({n for b in BACKENDS for n in kernels.extra_updates(fastbp.get_backend(b))})
        cases = [(k, s, c) for s in kernels.SIZES[mode(metafunc.config)]
                 for k in (*kernels.HOT_PATHS, *extra)
                 for c in ((kernels.PLAIN,) if k in kernels.HOT_PATHS else ()) + tuple(BACKENDS)]
        metafunc.parametrize("kernel, size, contender", cases,
                             ids=[f"{k}-{s.label.replace(' ', '-')}-{c}" for k, s, c in cases])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel(benchmark, kernel, size, contender, dtype):
    calls = _calls(contender, size, dtype)
    if kernel not in calls:
        pytest.skip(f"{contender} has no {kernel}")
    benchmark.group = f"kernel {kernel} {size.label} {dtype}"
    backend = None if contender == kernels.PLAIN else fastbp.get_backend(contender)
    sync = backend.synchronize if backend is not None and backend.gpu else None
    run(benchmark, Contender(contender, calls[kernel], sync=sync))

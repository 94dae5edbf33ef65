"""Start-up in fresh processes: ``import fastbp`` and the first train step, cold and warm cache.

Groups: ``startup import`` and ``startup first step <backend>``.  A cold round
gets a new, empty kernel cache directory; a warm round uses the cache a user
has (``NUMBA_CACHE_DIR`` if set, else numba's default), filled by one untimed
run first.
"""

import os
import time

import pytest

import fastbp
from fastbp.benchmarks.fresh import run_python
from fastbp.benchmarks.startup import CACHE_VARIABLES, FIRST_STEP_CODE, IMPORT_CODE


def _first_step(backend, env):
    return run_python(FIRST_STEP_CODE, backend, "float64", time.time(), env=env)


def test_import(benchmark):
    benchmark.group = "startup import"
    benchmark.pedantic(run_python, args=(IMPORT_CODE,), rounds=5, iterations=1)


@pytest.mark.parametrize("backend", fastbp.available_backends())
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_first_step(benchmark, backend, cache, tmp_path_factory):
    variable = CACHE_VARIABLES.get(backend)
    if variable is None and cache == "cold":
        pytest.skip(f"the {backend} backend has no kernel cache")

    def fresh_cache():
        env = {**os.environ, variable: str(tmp_path_factory.mktemp(f"{backend}-cache"))}
        return (backend, env), {}

    benchmark.group = f"startup first step {backend}"
    if cache == "cold":
        benchmark.pedantic(_first_step, setup=fresh_cache, rounds=3, iterations=1)
    else:
        _first_step(backend, None)  # fills the cache if it is not warm yet
        benchmark.pedantic(_first_step, args=(backend, None), rounds=3, iterations=1)

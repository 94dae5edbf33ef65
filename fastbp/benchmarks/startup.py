"""Start-up: what a new process pays before its first useful train step.

Each measurement runs in a fresh interpreter.  A backend that compiles and
caches kernels (numba, CuPy) is timed twice over: with a cold cache (a new,
empty cache directory) and with the warm cache the cold run left behind.
The first step is the textbook MNIST net (784-50-10, batch 100); the 2-8-2
toy's first step follows it, since a tiny net may take its own compiled path.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from fastbp.benchmarks import report
from fastbp.benchmarks.fresh import ChildFailed, run_python

REPEATS = {"full": {"import": 5, "warm": 3}, "quick": {"import": 3, "warm": 1}}
#: environment variable naming each compiling backend's kernel cache
CACHE_VARIABLES = {"numba": "NUMBA_CACHE_DIR", "cupy": "CUPY_CACHE_DIR"}

IMPORT_CODE = """\
import time
start = time.perf_counter()
import fastbp
imported = time.perf_counter()
fastbp.get_backend("numpy")
import json
print(json.dumps({"import_s": imported - start, "with_numpy_s": time.perf_counter() - start}))
"""

FIRST_STEP_CODE = """\
import time
start = time.perf_counter()
import json, sys
import fastbp
imported = time.perf_counter()
backend = fastbp.get_backend(sys.argv[1])
ready = time.perf_counter()
import numpy as np
from fastbp.nets import TwoLayerNet
from fastbp.optim import SGD

def first_two_steps(n_in, hidden, n_out, batch):
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((batch, n_in)))
    t = backend.asarray(rng.integers(0, n_out, batch))
    net = TwoLayerNet(n_in, hidden, n_out, backend=backend, dtype=sys.argv[2])
    times = []
    for _ in range(2):
        begin = time.perf_counter()
        float(net.train_step(x, t, SGD(0.01)))
        times.append(time.perf_counter() - begin)
    return times

mnist = first_two_steps(784, 50, 10, 100)
since_spawn = time.time() - float(sys.argv[3]) - mnist[1]  # to the end of the first step
toy = first_two_steps(2, 8, 2, 200)
print(json.dumps({"import_s": imported - start, "backend_s": ready - imported,
                  "first_step_s": mnist[0], "second_step_s": mnist[1],
                  "spawn_to_first_step_s": since_spawn,
                  "toy_first_step_s": toy[0], "toy_second_step_s": toy[1]}))
"""


def _median_of(runs: list) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def first_step(backend: str, dtype: str, cache: str, repeats: int, env=None) -> dict:
    """Median of ``repeats`` fresh processes reaching their first train step."""
    runs = [run_python(FIRST_STEP_CODE, backend, dtype, time.time(), env=env)
            for _ in range(repeats)]
    return {"backend": backend, "dtype": dtype, "cache": cache, "runs": len(runs),
            **_median_of(runs)}


def run(settings) -> dict:
    mode = "quick" if settings.quick else "full"
    repeats = REPEATS[mode]
    dtype = settings.dtypes[0]
    imports = _median_of([run_python(IMPORT_CODE) for _ in range(repeats["import"])])
    settings.progress("startup", f"import fastbp {report.seconds(imports['import_s'])}")
    rows = []
    for backend in settings.backends:
        try:
            variable = CACHE_VARIABLES.get(backend)
            if variable is None:
                rows.append(first_step(backend, dtype, "-", repeats["warm"]))
            else:
                with tempfile.TemporaryDirectory(prefix=f"fastbp-{backend}-cache-") as cache:
                    env = {**os.environ, variable: cache}
                    rows.append(first_step(backend, dtype, "cold", 1, env))
                    rows.append(first_step(backend, dtype, "warm", repeats["warm"], env))
        except ChildFailed as exc:
            rows.append({"backend": backend, "dtype": dtype, "cache": "-", "error": str(exc)})
        settings.progress("startup", f"{backend} first step: " + ", ".join(
            f"{r['cache']} {report.seconds(r.get('spawn_to_first_step_s'))}"
            for r in rows if r["backend"] == backend))
    return {"import": imports, "first_step": rows}


def table(result: dict) -> str:
    imports = result["import"]
    rows = []
    for r in result["first_step"]:
        if "error" in r:
            rows.append((r["backend"], r["dtype"], r["cache"], "failed: " + r["error"],
                         *[""] * 6))
            continue
        rows.append((r["backend"], r["dtype"], r["cache"],
                     *(report.seconds(r[k]) for k in (
                         "spawn_to_first_step_s", "import_s", "backend_s", "first_step_s",
                         "second_step_s", "toy_first_step_s")),
                     report.ratio(r["first_step_s"] / r["second_step_s"])))
    return report.table(
        "Start-up, fresh process each (median of runs)",
        ("backend", "dtype", "cache", "spawn to 1st step", "import fastbp", "backend load",
         "1st step 784-50-10", "2nd step", "1st step 2-8-2", "1st / 2nd"), rows,
        [(f"import fastbp: {report.seconds(imports['import_s'])}; with the NumPy backend "
          f"loaded: {report.seconds(imports['with_numpy_s'])}")])

"""pytest-benchmark suites for ``pytest bench/ --benchmark-only``.

The files are named ``bench_*.py`` so a plain ``pytest`` (``testpaths =
["tests"]``) never runs them; this conftest collects them when ``bench/`` is
named.  Compare commits with ``--benchmark-autosave`` and
``--benchmark-compare``; every benchmark has a group per shape or kernel.

With ``--benchmark-disable`` (CI's smoke run: each function runs once) or
``FASTBP_BENCH_QUICK=1`` the suites take the quick shapes of ``fastbp bench
--quick``.  OpenBLAS reads ``OPENBLAS_CORETYPE`` when NumPy is imported, before
any of this runs: unset it in the shell to measure a user's machine (the
header says which kernels ran).
"""

import os

import pytest


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py``; a file named on the command line pytest collects by itself."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def mode(config) -> str:
    """``"quick"`` for smoke runs, else ``"full"``: the key into the suites' shape tables."""
    quick = os.environ.get("FASTBP_BENCH_QUICK") or config.getoption("benchmark_disable")
    return "quick" if quick else "full"


def pytest_report_header(config):
    import fastbp
    from fastbp.benchmarks.report import blas_lines
    from fastbp.sysinfo import blas_info

    for name in fastbp.available_backends():  # loads each backend's BLAS, so it is listed
        fastbp.get_backend(name)
    pins = [f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
            if k in os.environ]
    backends = ", ".join(fastbp.available_backends())
    lines = [f"fastbp benchmarks: {mode(config)} shapes, backends {backends}",
             *blas_lines(blas_info())]
    if pins:
        lines.append(f"note: {' '.join(pins)} is set: OpenBLAS runs the kernels it pins")
    return lines


def run(benchmark, contender):
    """Benchmark a :class:`fastbp.benchmarks.timing.Contender`, synchronising GPU work."""
    if contender.sync is None:
        return benchmark(contender.fn)
    return benchmark(lambda: (contender.fn(), contender.sync()))

"""What this machine runs fastbp on: CPU, BLAS libraries and their kernels, packages.

Used by ``fastbp info`` and recorded with every benchmark result.  BLAS
libraries are listed by threadpoolctl, which sees only libraries already
loaded: the backends load theirs when they are created.
"""

from __future__ import annotations

import os
import platform

import numpy
from threadpoolctl import threadpool_info

# OpenBLAS kernel families by the widest SIMD they use.
_OPENBLAS_AVX512 = {"skylakex", "cooperlake", "sapphirerapids", "zen5"}
_OPENBLAS_AVX2 = {"haswell", "zen", "skylake"}
_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a container's cpuset),
    which ``os.cpu_count()`` ignores, as NumPy's OpenBLAS and numba do not."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_info() -> dict:
    """CPU model, core count and the widest SIMD level it offers.

    ``family`` and ``model_number`` (x86, from /proc/cpuinfo) tell apart
    generations that a virtual machine names alike ("AMD EPYC": family 25 is
    Zen 3 and Zen 4, family 26 Zen 5); None where not known.
    """
    model, flags = platform.processor() or platform.machine(), set()
    numbers = {"cpu family": None, "model": None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() in numbers and value.strip().isdigit():
                    numbers[key.strip()] = int(value)
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    if "avx512f" in flags:
        simd = "AVX-512"
    elif "avx2" in flags:
        simd = "AVX2"
    else:
        simd = "unknown" if not flags else "SSE/other"
    return {"model": model, "family": numbers["cpu family"], "model_number": numbers["model"],
            "cores": os.cpu_count(), "simd": simd}


def _openblas_simd(architecture) -> str | None:
    arch = (architecture or "").lower()
    if arch in _OPENBLAS_AVX512:
        return "AVX-512"
    if arch in _OPENBLAS_AVX2:
        return "AVX2"
    return None


def blas_info(cpu_simd: str | None = None) -> list:
    """Every BLAS library loaded in this process, with a note when it runs below the CPU."""
    cpu_simd = cpu_simd or cpu_info()["simd"]
    libraries = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        entry = {k: lib.get(k) for k in ("filepath", "internal_api", "version",
                                          "architecture", "num_threads", "threading_layer")}
        kernel_simd = _openblas_simd(lib.get("architecture"))
        if cpu_simd == "AVX-512" and kernel_simd == "AVX2":
            pinned = os.environ.get("OPENBLAS_CORETYPE")
            fix = (f"OPENBLAS_CORETYPE={pinned} pins it there: unset it (or set "
                   "OPENBLAS_CORETYPE=SkylakeX) to use the AVX-512 kernels" if pinned else
                   "this OpenBLAS does not recognise the CPU: upgrade numpy/scipy")
            entry["warning"] = (f"runs {lib.get('architecture')} (AVX2) kernels on an AVX-512 "
                                f"CPU, about half the matrix-product speed; {fix}")
        libraries.append(entry)
    return libraries


def package_versions() -> dict:
    """Versions of the packages that matter for speed, without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    for name in ("fastbp", "numba", "llvmlite", "scipy", "cupy-cuda12x", "cupy-cuda13x",
                 "threadpoolctl", "torch", "jax", "jaxlib"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def machine_info() -> dict:
    """The whole picture, as recorded in benchmark JSON and printed by ``fastbp info``."""
    cpu = cpu_info()
    return {
        "cpu": cpu,
        "platform": platform.platform(),
        "packages": package_versions(),
        "blas": blas_info(cpu["simd"]),
        "environment": {k: os.environ[k] for k in _BLAS_ENV if k in os.environ},
    }

"""One SGD train step (forward + backward + update) across backends and peers.

Per shape and dtype, the contenders of :mod:`fastbp.benchmarks.contenders`
are timed in interleaved rounds and compared within that run: each ratio is
a contender's median time over the fastest fastbp backend's (numba on a CPU,
cupy on a GPU).  Also measured: the peak memory of one large step per backend
(fresh processes), and how the numba step's time changes right after a
product in NumPy's BLAS and right after one in SciPy's.
"""

from __future__ import annotations

import functools

import numpy as np

from fastbp.benchmarks import memory, report
from fastbp.benchmarks.contenders import CPU_MAKERS, GPU_MAKERS, Problem, Shape, make_contenders
from fastbp.benchmarks.fresh import ChildFailed
from fastbp.benchmarks.timing import Contender, interleaved

SHAPES = {
    "full": [Shape(2, 8, 2, 200), Shape(784, 50, 10, 100), Shape(784, 1024, 10, 256),
             Shape(784, 2048, 10, 1024)],
    "quick": [Shape(2, 8, 2, 200), Shape(784, 1024, 10, 256)],
}
#: shapes too large for a CPU round; timed on a GPU only
GPU_SHAPES = [Shape(784, 4096, 10, 8192), Shape(4096, 4096, 10, 8192)]
MEMORY_SHAPE = Shape(784, 2048, 10, 1024)
BLAS_CHECK_SHAPE = Shape(784, 1024, 10, 256)
#: the fastbp contender the others are compared with, by device, first present wins
HEROES = {"cpu": ("fastbp-numba", "fastbp-numpy"), "gpu": ("fastbp-cupy",)}


def contender_names(backends, device) -> list:
    """Contenders in table order: fastbp's chosen backends among the peers."""
    makers = CPU_MAKERS if device == "cpu" else GPU_MAKERS
    return [name for name in makers
            if not name.startswith("fastbp-") or name[len("fastbp-"):] in backends]


@functools.cache
def gpu_present() -> bool:
    """True when a CUDA device answers; asks CuPy, then PyTorch, without failing."""
    return any(_answers(probe) for probe in (_cupy_devices, _torch_devices))


def _answers(probe) -> bool:
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - missing package or broken driver: no GPU to time
        return False


def _cupy_devices():
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


def _torch_devices():
    import torch

    return torch.cuda.is_available()


def measure_group(shape, dtype: str, device: str, names, settings, fastest: bool = False) -> dict:
    """Time the contenders ``names`` on one shape (or :class:`Config`) and dtype, interleaved.

    The hero, whom the speed-ups compare with, is the first of ``HEROES[device]``
    measured, or with ``fastest`` the fastest of them.
    """
    skipped = {}
    contenders = make_contenders(Problem(shape, dtype), names, skipped)
    timings = interleaved(contenders, settings.rounds, settings.round_s)
    medians = {name: t.median for name, t in timings.items()}
    heroes = [h for h in HEROES[device] if h in medians]
    hero = (min(heroes, key=medians.get) if fastest else heroes[0]) if heroes else None
    return {"device": device, "shape": shape.label, "params": shape.n_params, "dtype": dtype,
            "hero": hero, "timings": {name: t.as_dict() for name, t in timings.items()},
            "speedup": {name: medians[name] / medians[hero] for name in medians} if hero else {},
            "skipped": skipped}


def blas_independence(dtype: str, settings) -> dict:
    """The numba step alone, right after a NumPy product and right after a SciPy product.

    A multithreaded product leaves its library's threads spinning for a
    while; a step whose products run in another library has to fight them.
    The step's products all run in one library (NumPy's, where it can be
    reached): right after a product in that library the step takes as long
    as alone, right after one in the other it pays for the spinning pool.
    """
    from scipy.linalg import blas

    step = CPU_MAKERS["fastbp-numba"](Problem(BLAS_CHECK_SHAPE, dtype))
    a = np.random.default_rng(3).standard_normal((512, 512)).astype(dtype)
    gemm = blas.dgemm if dtype == "float64" else blas.sgemm
    contenders = [Contender("alone", step.fn),
                  Contender("after NumPy BLAS", step.fn, before=lambda: a @ a),
                  Contender("after SciPy BLAS", step.fn, before=lambda: gemm(1.0, a, a))]
    medians = {n: t.median for n, t in interleaved(contenders, settings.rounds,
                                                    settings.round_s).items()}
    return {"shape": BLAS_CHECK_SHAPE.label, "dtype": dtype, "median_s": medians,
            "after_numpy_over_alone": medians["after NumPy BLAS"] / medians["alone"],
            "after_scipy_over_alone": medians["after SciPy BLAS"] / medians["alone"]}


def run(settings) -> dict:
    from fastbp.sysinfo import blas_info

    mode = "quick" if settings.quick else "full"
    gpu = gpu_present()
    shapes = [(s, "cpu") for s in SHAPES[mode]]
    if gpu:
        shapes += [(s, "gpu") for s in SHAPES[mode] + GPU_SHAPES]
    groups = []
    for shape, device in shapes:
        for dtype in settings.dtypes:
            group = measure_group(shape, dtype, device, contender_names(settings.backends, device),
                                  settings)
            groups.append(group)
            settings.progress("train-step", f"{device} {shape.label} {dtype}: " + ", ".join(
                f"{n} {report.seconds(t['median_s'])}" for n, t in group["timings"].items()))

    memory_rows = []
    for dtype in settings.dtypes[:1] if settings.quick else settings.dtypes:
        for name in contender_names(settings.backends, "cpu"):
            if not (name == "textbook" or name.startswith("fastbp-")):
                continue
            try:
                memory_rows.append(memory.measure(name, dtype, MEMORY_SHAPE))
            except ChildFailed as exc:
                memory_rows.append({"contender": name, "dtype": dtype, "error": str(exc)})
            settings.progress("train-step", f"peak memory {name} {dtype}: "
                              f"{memory_rows[-1].get('peak_delta_bytes', 0) / 2**20:.1f} MiB")

    checks = []
    if "numba" in settings.backends:
        for dtype in settings.dtypes[:1] if settings.quick else settings.dtypes:
            checks.append(blas_independence(dtype, settings))
            check = checks[-1]
            settings.progress("train-step", f"one-BLAS check {dtype}: step after a NumPy product "
                              f"{check['after_numpy_over_alone']:.2f}x alone, after a SciPy "
                              f"product {check['after_scipy_over_alone']:.2f}x")
    return {"groups": groups, "memory": memory_rows, "blas_independence": checks,
            "gpu": gpu, "blas": blas_info()}


def table(result: dict) -> str:
    out = []
    for device in ("cpu", "gpu"):
        groups = [g for g in result["groups"] if g["device"] == device]
        if groups:
            out.append(_device_tables(device, groups))
    out.append(_memory_table(result["memory"]))
    for check in result["blas_independence"]:
        m = check["median_s"]
        out.append(f"One BLAS per step ({check['shape']} {check['dtype']}): numba step "
                   f"{report.seconds(m['alone'])} alone, {report.seconds(m['after NumPy BLAS'])} "
                   f"right after a NumPy product, {report.seconds(m['after SciPy BLAS'])} right "
                   f"after a SciPy product ({check['after_numpy_over_alone']:.2f}x and "
                   f"{check['after_scipy_over_alone']:.2f}x alone)\n")
    out.append("\n".join(report.blas_lines(result["blas"])) + "\n")
    return "\n".join(out)


def _device_tables(device, groups) -> str:
    names = report.contender_names(groups)
    hero = groups[0]["hero"]
    text = report.time_table(f"Train step (SGD), {device.upper()}: median time per step, "
                             "interleaved rounds", "shape", groups)
    if not hero:
        return text
    others = [n for n in names if n != hero and not n.startswith("floor")]
    floors = [n for n in names if n.startswith("floor")]
    ratio_rows = [(g["shape"], g["dtype"],
                   *(report.ratio(g["speedup"].get(n)) for n in others),
                   *(report.ratio(1 / g["speedup"][n]) if n in g["speedup"] else "-"
                     for n in floors)) for g in groups]
    return text + "\n" + report.table(
        f"Speed-up of {hero} (other's time / {hero}'s; above 1: {hero} is faster), "
        f"and {hero}'s time over the floor (the five matrix products alone)",
        ("shape", "dtype", *(f"vs {n}" for n in others), *(f"/ {n}" for n in floors)),
        ratio_rows)


def _memory_table(rows) -> str:
    body = []
    for r in rows:
        if "error" in r:
            body.append((r["contender"], r["dtype"], "failed: " + r["error"], "", ""))
        else:
            body.append((r["contender"], r["dtype"], f"{r['peak_delta_bytes'] / 2**20:.1f} MiB",
                         f"{r['in_hidden_arrays']:.2f}", "yes" if r["high_water_reset"] else "no"))
    return report.table(
        f"Peak memory of one train step, {MEMORY_SHAPE.label} (fresh process each, "
        "peak-RSS increase over a warmed-up step)",
        ("contender", "dtype", "peak increase", "in batch x hidden arrays", "mark reset"), body)

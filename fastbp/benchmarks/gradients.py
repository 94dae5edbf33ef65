"""Backprop against numerical differentiation: what the chain rule buys.

A central-difference gradient costs two forward passes per parameter, so its
time grows like P (times the cost of a forward pass); backprop costs about
three forward passes in all.  The speed-up should therefore grow like P, and
speed-up / P stay roughly constant.  Gradients are float64 whatever
``--dtype`` says: central differences in float32 are noise.

Nets whose full numerical gradient would outlast the time budget are measured
on a random block of each parameter array and the time scaled up to all P
parameters (every parameter costs the same two forward passes); the results
say so in ``numerical_measured``.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from fastbp.backends import get_backend, to_numpy
from fastbp.benchmarks import report
from fastbp.benchmarks.contenders import Shape
from fastbp.benchmarks.timing import Contender, calibrate, run_round, settle, time_once
from fastbp.gradcheck import directional_check, rel_error
from fastbp.nets import TwoLayerNet

HIDDEN = {"full": (10, 30, 100, 300, 1000), "quick": (10, 100, 1000)}
BATCHES = {"full": (3, 100), "quick": (3,)}
#: seconds: a full numerical gradient is timed when it would take at most this long
FULL_BUDGET = {"full": 2.0, "quick": 0.3}
#: seconds spent on the sample when a net is too large for a full numerical gradient
SAMPLE_BUDGET = {"full": 0.5, "quick": 0.1}
REPEATS = {"full": 3, "quick": 1}
PROBE_PARAMS = 16
#: ReLU inputs closer than this to zero are avoided: ``h`` (1e-4) times a large input
KINK_MARGIN = 1e-3


def shapes(batch, mode) -> list:
    """The 2-8-2 toy and the 784-H-10 nets, smallest first."""
    return [Shape(2, 8, 2, batch)] + [Shape(784, h, 10, batch) for h in HIDDEN[mode]]


def fit_exponent(sizes, times) -> float:
    """Least-squares slope of log(time) against log(size): ``time ~ size ** slope``."""
    slope, _ = np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(times, float)), 1)
    return float(slope)


def random_blocks(params: dict, n_sample: int, rng) -> dict:
    """A random contiguous block of each array, sized in proportion, about ``n_sample`` in all."""
    total = sum(p.size for p in params.values())
    blocks = {}
    for key, p in params.items():
        size = min(p.size, max(1, round(n_sample * p.size / total)))
        start = int(rng.integers(0, p.size - size + 1))
        blocks[key] = slice(start, start + size)
    return blocks


def _worst_error(backprop: dict, numerical: dict, blocks=None) -> float:
    errors = []
    for key, num in numerical.items():
        bp = to_numpy(backprop[key])
        bp = bp.reshape(-1)[blocks[key]] if blocks else bp
        errors.append(rel_error(bp, num))
    return max(errors)


def make_problem(shape: Shape, backend):
    """A seeded net and batch whose ReLU inputs all keep clear of the kink.

    A pre-activation within about ``h`` of zero makes the central difference
    straddle the kink and puts an error of order 1e-2 into a few gradient
    entries (see :mod:`fastbp.gradcheck`); rows of ``x`` with one closer than
    ``KINK_MARGIN`` are redrawn, so the reported error measures the
    arithmetic.  Timing is the same either way.
    """
    net = TwoLayerNet(shape.n_in, shape.hidden, shape.n_out, weight_init_std="he", seed=0,
                      backend=backend)
    rng = np.random.default_rng(1)
    W1, b1 = (to_numpy(net.params[k]) for k in ("W1", "b1"))
    x = rng.standard_normal((shape.batch, shape.n_in))
    for _ in range(1000):
        near = (np.abs(x @ W1 + b1) < KINK_MARGIN).any(axis=1)
        if not near.any():
            break
        x[near] = rng.standard_normal((int(near.sum()), shape.n_in))
    t = rng.integers(0, shape.n_out, shape.batch)
    return net, backend.asarray(x), backend.asarray(t)


def measure(shape: Shape, backend, settings, mode) -> dict:
    """Time one numerical and one backprop gradient of ``shape``, alternating repeats."""
    net, x, t = make_problem(shape, backend)
    sync = backend.synchronize if backend.gpu else None
    backprop = Contender("backprop", lambda: net.gradient(x, t), sync=sync)
    calls = calibrate(backprop, settings.round_s)
    n_params = shape.n_params
    rng = np.random.default_rng(2)
    probe = random_blocks(net.params, PROBE_PARAMS, rng)
    per_param = time_once(lambda: net.numerical_gradient(x, t, blocks=probe), sync) / sum(
        b.stop - b.start for b in probe.values())

    if per_param * n_params <= FULL_BUDGET[mode]:
        blocks, scale, measured = None, 1.0, "full"
        numerical_fn = functools.partial(net.numerical_gradient, x, t)
    else:
        wanted = int(min(n_params, max(64, SAMPLE_BUDGET[mode] / per_param)))
        blocks = random_blocks(net.params, wanted, rng)
        n_sample = sum(b.stop - b.start for b in blocks.values())
        scale, measured = n_params / n_sample, f"sample of {n_sample:,}, extrapolated"
        numerical_fn = functools.partial(net.numerical_gradient, x, t, blocks=blocks)

    numerical_times, backprop_times, result = [], [], {}
    for _ in range(REPEATS[mode]):
        start = time.perf_counter()
        result = numerical_fn()
        if sync:
            sync()
        numerical_times.append((time.perf_counter() - start) * scale)
        settle(0.015)
        backprop_times.append(run_round(backprop, calls) / calls)
    t_num, t_bp = float(np.median(numerical_times)), float(np.median(backprop_times))
    return {"backend": backend.name, "net": f"{shape.n_in}-{shape.hidden}-{shape.n_out}",
            "batch": shape.batch, "params": n_params, "numerical_s": t_num, "backprop_s": t_bp,
            "speedup": t_num / t_bp, "speedup_per_param": t_num / t_bp / n_params,
            "rel_error": _worst_error(net.gradient(x, t), result, blocks),
            "numerical_measured": measured}


def measure_directional(shape: Shape, backend, row: dict, mode) -> dict:
    """Cost of ``directional_check`` (3 random directions) next to the full gradients."""
    net, x, t = make_problem(shape, backend)
    sync = backend.synchronize if backend.gpu else None
    errors = directional_check(net, x, t)  # warm-up, and the errors to report
    elapsed = float(np.median([time_once(lambda: directional_check(net, x, t), sync)
                               for _ in range(REPEATS[mode])]))
    return {"backend": backend.name, "net": row["net"], "batch": shape.batch,
            "directions": len(errors), "seconds": elapsed,
            "vs_backprop": elapsed / row["backprop_s"],
            "vs_numerical": row["numerical_s"] / elapsed, "max_error": max(errors)}


def run(settings) -> dict:
    mode = "quick" if settings.quick else "full"
    if settings.dtypes != ["float64"]:
        settings.progress("gradients", "in float64 whatever --dtype says: central differences "
                                       "in float32 are noise")
    rows, fits, directional = [], [], []
    for name in settings.backends:
        backend = get_backend(name)
        for batch in BATCHES[mode]:
            family = []
            for shape in shapes(batch, mode):
                row = measure(shape, backend, settings, mode)
                settings.progress("gradients", f"{name} {shape.label}: numerical "
                                  f"{report.seconds(row['numerical_s'])} ({row['numerical_measured']}), "
                                  f"backprop {report.seconds(row['backprop_s'])}, "
                                  f"speed-up {report.ratio(row['speedup'])}")
                rows.append(row)
                if shape.n_in == 784:
                    family.append(row)
            sizes = [r["params"] for r in family]
            fits.append({"backend": name, "batch": batch, "nets": [r["net"] for r in family],
                         "numerical": fit_exponent(sizes, [r["numerical_s"] for r in family]),
                         "backprop": fit_exponent(sizes, [r["backprop_s"] for r in family])})
            directional.append(measure_directional(shapes(batch, mode)[-1], backend,
                                                   family[-1], mode))
            settings.progress("gradients", f"{name} B={batch}: directional check "
                              f"{report.seconds(directional[-1]['seconds'])}")
    return {"dtype": "float64", "rows": rows, "fits": fits, "directional": directional}


def table(result: dict) -> str:
    rows = [(r["backend"], r["batch"], r["net"], f"{r['params']:,}",
             report.seconds(r["numerical_s"]), report.seconds(r["backprop_s"]),
             report.ratio(r["speedup"]), f"{r['speedup_per_param']:.3g}",
             f"{r['rel_error']:.1e}", r["numerical_measured"]) for r in result["rows"]]
    notes = ["growth exponents, time ~ P^k over the 784-H-10 nets (least squares on log-log):"]
    notes += [f"  {f['backend']} B={f['batch']}: numerical k={f['numerical']:.2f}, "
              f"backprop k={f['backprop']:.2f}" for f in result["fits"]]
    notes.append("directional check (random directions over all parameters at once), largest net:")
    notes += [f"  {d['backend']} {d['net']} B={d['batch']}: {report.seconds(d['seconds'])} for "
              f"{d['directions']} directions = {d['vs_backprop']:.3g}x one backprop gradient, "
              f"{report.ratio(d['vs_numerical'])} faster than the numerical gradient, "
              f"max error {d['max_error']:.1e}" for d in result["directional"]]
    return report.table(
        "Backprop vs numerical differentiation (TwoLayerNet, float64, central differences)",
        ("backend", "batch", "net", "P", "numerical", "backprop", "speed-up", "speed-up/P",
         "rel. error", "numerical measured"), rows, notes)

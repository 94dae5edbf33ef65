"""PNG plots of benchmark results, drawn with matplotlib's object API (no pyplot, no GUI)."""

from __future__ import annotations

import os

GRADIENTS_PNG = "bench-gradients.png"
TRAIN_STEP_PNG = "bench-train-step.png"


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "fastbp[bench]"') from None
    return Figure(**kwargs)


def draw(results: dict, folder: str) -> list:
    """Draw the plots the results allow into ``folder``; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    if "gradients" in results:
        paths.append(gradients(results["gradients"], os.path.join(folder, GRADIENTS_PNG)))
    if "train-step" in results:
        paths.append(train_step(results["train-step"], os.path.join(folder, TRAIN_STEP_PNG)))
    return paths


def gradients(result: dict, path: str) -> str:
    """Time against parameter count, log-log: numerical (solid) and backprop (dashed)."""
    fig = _figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    series = list(dict.fromkeys((r["backend"], r["batch"]) for r in result["rows"]))
    for i, (backend, batch) in enumerate(series):
        color = f"C{i}"
        rows = sorted((r for r in result["rows"] if (r["backend"], r["batch"]) == (backend, batch)),
                      key=lambda r: r["params"])
        sizes = [r["params"] for r in rows]
        ax.plot(sizes, [r["numerical_s"] for r in rows], "-", color=color,
                label=f"numerical, {backend}, batch {batch}")
        ax.plot(sizes, [r["backprop_s"] for r in rows], "--s", color=color, markersize=4,
                label=f"backprop, {backend}, batch {batch}")
        for r in rows:  # filled: timed in full; hollow: extrapolated from a sample
            full = r["numerical_measured"] == "full"
            ax.plot(r["params"], r["numerical_s"], "o", color=color,
                    markerfacecolor=color if full else "white")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters P")
    ax.set_ylabel("seconds per gradient")
    ax.set_title("TwoLayerNet gradient, float64\nnumerical (hollow: extrapolated from a sample) "
                 "vs backprop", fontsize="medium")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


def train_step(result: dict, path: str) -> str:
    """Bars: each contender's speed-up over the textbook NumPy step, per shape, one panel per dtype."""
    groups = [g for g in result["groups"] if g["device"] == "cpu" and "textbook" in g["timings"]]
    dtypes = list(dict.fromkeys(g["dtype"] for g in groups))
    fig = _figure(figsize=(6 * max(1, len(dtypes)), 4.5), layout="constrained")
    for i, dtype in enumerate(dtypes, start=1):
        ax = fig.add_subplot(1, len(dtypes), i)
        rows = [g for g in groups if g["dtype"] == dtype]
        names = list(dict.fromkeys(n for g in rows for n in g["timings"] if n != "textbook"))
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            xs, heights = [], []
            for k, g in enumerate(rows):
                if name in g["timings"]:
                    xs.append(k + (j - (len(names) - 1) / 2) * width)
                    heights.append(g["timings"]["textbook"]["median_s"]
                                   / g["timings"][name]["median_s"])
            ax.bar(xs, heights, width, label=name, color=f"C{j}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [g["shape"] for g in rows], fontsize="small")
        ax.set_ylabel("speed-up over the textbook NumPy step")
        ax.set_title(f"SGD train step, {dtype}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path

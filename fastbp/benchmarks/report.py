"""Text tables, the JSON record and the BLAS line shared by the suites."""

from __future__ import annotations

import json
import os


def seconds(value) -> str:
    """A duration with a unit a reader takes in at a glance."""
    if value is None:
        return "-"
    if value >= 1:
        return f"{_digits(value)} s"
    if value >= 1e-3:
        return f"{_digits(value * 1e3)} ms"
    return f"{_digits(value * 1e6)} µs"


def _digits(value) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def ratio(value) -> str:
    if value is None:
        return "-"
    return f"{_digits(value)}x"


def table(title: str, headers, rows, notes=()) -> str:
    """A fixed-width text table; the first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [title, line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    out += list(notes)
    return "\n".join(out) + "\n"


def contender_names(groups) -> list:
    """Every contender timed in some group, in the order first met."""
    return list(dict.fromkeys(n for g in groups for n in g["timings"]))


def time_table(title: str, first: str, groups, notes=()) -> str:
    """Median time per call of each contender, one row per group (its label and dtype).

    ``groups`` are measurements as the train-step suite records them
    (``shape``, ``dtype``, ``timings``, ``skipped``); ``first`` heads the
    label column.  The notes say the run's noise and what was skipped.
    """
    names = contender_names(groups)
    rows = [(g["shape"], g["dtype"], *(seconds(g["timings"][n]["median_s"])
                                       if n in g["timings"] else "-" for n in names))
            for g in groups]
    spreads = sorted(t["spread"] for g in groups for t in g["timings"].values())
    noise = ([f"round-to-round spread (interquartile range / median): typically "
              f"{spreads[len(spreads) // 2]:.0%}, at most {spreads[-1]:.0%}"] if spreads else [])
    return table(title, (first, "dtype", *names), rows, [*noise, *notes, *skipped_lines(groups)])


def skipped_lines(results) -> list:
    """``skipped NAME: why`` once per contender that some measurement had to leave out."""
    reasons = {}
    for r in results:
        reasons.update(r.get("skipped", {}))
    return [f"skipped {name}: {why}" for name, why in reasons.items()]


def blas_lines(blas: list) -> list:
    """One line per loaded BLAS library: which kernels ran, with any warning."""
    lines = []
    for lib in blas:
        name = os.path.basename(lib.get("filepath") or "?")
        lines.append(f"BLAS {name}: {lib.get('internal_api')} {lib.get('version')}, "
                     f"{lib.get('architecture')} kernels, {lib.get('num_threads')} threads")
        if "warning" in lib:
            lines.append(f"  WARNING: {lib['warning']}")
    return lines


def write_json(path, record: dict):
    """Write ``record`` (results plus the machine) as indented JSON, creating the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)
        f.write("\n")

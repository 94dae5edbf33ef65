"""Peak memory of one train step, each measured in a fresh process.

A process's peak RSS only ever grows, so the child warms the step up once
(compilation, BLAS buffers, allocator pools), resets the kernel's high-water
mark to the current RSS (``/proc/self/clear_refs``, Linux) and reports how far
one more step raises the peak RSS: the memory the step itself needed.  Where
the mark cannot be reset the result says so.

glibc's malloc keeps freed blocks of up to 32 MiB for reuse once it has seen
one freed (its mmap threshold adapts), so a warmed-up step would find its
memory already resident and show no increase at all.  The child therefore
runs with the threshold fixed at its default, 128 KiB: every large array is
mapped when created and returned when freed, and the peak is the step's.
"""

from __future__ import annotations

import os
import resource
import sys

import numpy as np

from fastbp.benchmarks.contenders import CPU_MAKERS, Problem, Shape
from fastbp.benchmarks.fresh import run_python


def hidden_bytes(shape: Shape, dtype) -> int:
    """Bytes of one batch x hidden array: the unit a step's peak is counted in.

    A step cannot do with less than the hidden activation and its gradient,
    two of these; everything else of a 784-H-10 step is far smaller or, for
    the weight gradients, can be folded into the update.
    """
    return shape.batch * shape.hidden * np.dtype(dtype).itemsize


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """The process's peak RSS: Linux's VmHWM where readable, else ``ru_maxrss``.

    After a fork and exec, ``ru_maxrss`` is at least the parent's peak, so a
    child of a large benchmark process (torch and jax loaded) would see no
    increase at all; VmHWM belongs to the child's own memory map.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(contender: str, dtype: str, shape: Shape) -> dict:
    """Runs in the fresh process: the peak-RSS increase of one warmed-up step."""
    step = CPU_MAKERS[contender](Problem(shape, dtype))  # the maker runs one step
    reset = _reset_peak()
    before = _peak_rss_bytes()
    step.fn()
    return {"peak_delta_bytes": _peak_rss_bytes() - before, "high_water_reset": reset}


def measure(contender: str, dtype: str, shape: Shape) -> dict:
    """Run :func:`child` in a fresh interpreter and return its report."""
    code = ("import json, sys; from fastbp.benchmarks import memory as m; "
            "from fastbp.benchmarks.contenders import Shape; "
            "print(json.dumps(m.child(sys.argv[1], sys.argv[2], Shape(*map(int, sys.argv[3:])))))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    result = run_python(code, contender, dtype, *shape, env=env)
    unit = hidden_bytes(shape, dtype)
    return {"contender": contender, "dtype": dtype, "shape": shape.label, **result,
            "hidden_array_bytes": unit, "in_hidden_arrays": result["peak_delta_bytes"] / unit}

"""Data-parallel training over MPI: steps per second, and the share of a step spent in Allreduce.

Each measurement is one job training the same global batch: one process
alone (no MPI), or ``mpiexec -n R python -m mpi4py`` with every rank taking
its share of the batch and averaging gradients through the gradient hook,
whose time is summed apart.  Jobs alternate, 1 rank and R ranks in turn, so
the ratios come from one interleaved run.  ``projection`` extends the
measured numbers to larger clusters with the alpha-beta model of allreduce.
The suite is skipped, with the reason, where mpi4py or mpiexec is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fastbp.benchmarks.report import seconds
from fastbp.benchmarks.report import table as text_table

#: (layer sizes, global batch); quick runs the first only
SHAPES = [((784, 1024, 10), 256), ((784, 1024, 1024, 10), 256)]
RANKS = 2
#: the network of the projection: 100 Gbit/s, 5 µs a message
BANDWIDTH_BYTES_S, LATENCY_S = 100e9 / 8, 5e-6
PROJECTED_RANKS = (8, 64, 512)


def _mpiexec() -> str | None:
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def unavailable() -> str | None:
    """Why the suite cannot run here, or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "fastbp[mpi]")'
    if _mpiexec() is None:
        return "no mpiexec next to python or on PATH"
    return None


def worker(sizes, batch, dtype, backend, steps) -> dict:
    """Runs on every rank of a job: ``steps`` Adam steps of the global ``batch``; rank 0's timings."""
    import numpy

    from fastbp.distributed import DataParallel, world
    from fastbp.nets import MultiLayerNet
    from fastbp.optim import Adam

    comm = world()
    net = MultiLayerNet(sizes[0], list(sizes[1:-1]), sizes[-1], weight_init_std="he", seed=0,
                        backend=backend, dtype=dtype)
    parallel, optimizer = DataParallel(comm, net), Adam()
    rng = numpy.random.default_rng(0)
    pool = [(rng.standard_normal((batch, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], batch))
            for _ in range(8)]
    reducing = [0.0]
    hook = parallel.gradient_hook
    if hook is not None:
        def timed(grads):
            start = time.perf_counter()
            hook(grads)
            reducing[0] += time.perf_counter() - start
        net.gradient_hook = timed

    def step(k):
        x, t = pool[k % len(pool)]
        local = parallel.shard(numpy.arange(batch))
        net.train_step(x[local], t[local], optimizer)

    for k in range(3):  # compile, warm the BLAS buffers and the network
        step(k)
    comm.barrier()
    reducing[0] = 0.0
    start = time.perf_counter()
    for k in range(steps):
        step(k)
    comm.barrier()
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "step_s": elapsed / steps,
            "allreduce_s": reducing[0] / steps, "allreduce_share": reducing[0] / elapsed,
            "gradient_bytes": int(net.grads.flat.nbytes), "ranks": comm.size, "rank": comm.rank}


_CODE = ("import json, sys; from fastbp.benchmarks.distributed import worker; "
         "r = worker(json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], "
         "int(sys.argv[5]));\nif r['rank'] == 0: print(json.dumps(r))")


def _job(ranks, sizes, batch, dtype, backend, steps) -> dict:
    """One job of ``ranks`` processes; the JSON line rank 0 prints."""
    args = [json.dumps(list(sizes)), str(batch), dtype, backend, str(steps)]
    python = [sys.executable, "-m", "mpi4py", "-c", _CODE] if ranks > 1 else [sys.executable, "-c", _CODE]
    cmd = ([_mpiexec(), "-n", str(ranks)] if ranks > 1 else []) + python + args
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "OMPI_"))}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}...: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(settings) -> dict:
    reason = unavailable()
    if reason is not None:
        return {"skipped": reason}
    backend = "numba" if "numba" in settings.backends else settings.backends[0]
    repeats, steps = (1, 10) if settings.quick else (3, 40)
    groups = []
    for sizes, batch in SHAPES[:1] if settings.quick else SHAPES:
        for dtype in settings.dtypes:
            label = "-".join(map(str, sizes))
            runs = {1: [], RANKS: []}
            for _ in range(repeats):  # alternate, so both see the same machine
                for ranks in runs:
                    settings.progress("distributed", f"{label} B={batch} {dtype}, {ranks} rank(s)")
                    runs[ranks].append(_job(ranks, sizes, batch, dtype, backend, steps))
            groups.append({"shape": label, "batch": batch, "dtype": dtype, "backend": backend,
                           "runs": {str(r): _median(v) for r, v in runs.items()}})
    return {"backend": backend, "ranks": RANKS, "groups": groups,
            "projection": [projection(g) for g in groups]}


def _median(runs) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def ring_allreduce_s(nbytes, p, bandwidth=BANDWIDTH_BYTES_S, latency=LATENCY_S) -> float:
    """The alpha-beta time of a ring allreduce: ``2(p-1)/p * bytes / bandwidth + 2(p-1) * latency``."""
    return 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * latency


def tree_allreduce_s(nbytes, p, bandwidth=BANDWIDTH_BYTES_S, latency=LATENCY_S) -> float:
    """Rabenseifner's reduce-scatter + allgather by recursive halving: ``2 log2(p)`` latencies."""
    return 2 * (p - 1) / p * nbytes / bandwidth + 2 * math.ceil(math.log2(p)) * latency


def projection(group) -> dict:
    """Efficiency at ``PROJECTED_RANKS`` if each rank computed its share at the measured rate.

    Compute per rank is the one-process step time scaled by the rank's share
    of the batch (optimistic: small batches use the cores less well), the
    allreduce is not overlapped with compute, and a rank needs at least one
    sample: past ``batch`` ranks the global batch, not the network, limits.
    """
    alone = group["runs"]["1"]
    nbytes, batch = alone["gradient_bytes"], group["batch"]
    rows = []
    for p in PROJECTED_RANKS:
        compute = alone["step_s"] * max(1, batch // p) / batch
        reduce_s = min(ring_allreduce_s(nbytes, p), tree_allreduce_s(nbytes, p))
        rows.append({"ranks": p, "samples_per_rank": batch / p, "compute_s": compute,
                     "ring_s": ring_allreduce_s(nbytes, p), "tree_s": tree_allreduce_s(nbytes, p),
                     "efficiency": compute / (compute + reduce_s), "batch_limited": p > batch})
    return {"shape": group["shape"], "dtype": group["dtype"], "rows": rows}


def table(result) -> str:
    if "skipped" in result:
        return f"distributed: skipped ({result['skipped']})\n"
    ranks = result["ranks"]
    rows = []
    for g in result["groups"]:
        one, many = g["runs"]["1"], g["runs"][str(ranks)]
        rows.append((g["shape"], g["batch"], g["dtype"], f"{one['steps_per_s']:.1f}",
                     f"{many['steps_per_s']:.1f}", f"{many['steps_per_s'] / one['steps_per_s']:.2f}x",
                     seconds(many["allreduce_s"]), f"{many['allreduce_share']:.0%}",
                     f"{one['gradient_bytes'] / 1e6:.1f} MB"))
    out = text_table(
        f"Data-parallel Adam steps on {result['backend']} (global batch split over the ranks; "
        f"1 rank = one process, no MPI)",
        ("shape", "batch", "dtype", "steps/s 1 rank", f"steps/s {ranks} ranks", "speed-up",
         "allreduce/step", "share of step", "gradients"), rows,
        notes=[f"{ranks} ranks on this machine share its cores (each gets cores / ranks threads)"])
    proj = []
    for p in result["projection"]:
        for r in p["rows"]:
            proj.append((p["shape"], p["dtype"], r["ranks"], f"{r['samples_per_rank']:g}",
                         seconds(r["compute_s"]), seconds(r["ring_s"]), seconds(r["tree_s"]),
                         f"{r['efficiency']:.0%}", "yes" if r["batch_limited"] else ""))
    return out + "\n" + text_table(
        "Projection: 100 Gbit/s, 5 us per message, compute per rank scaled from 1 rank, no overlap",
        ("shape", "dtype", "ranks", "samples/rank", "compute", "ring allreduce",
         "tree allreduce", "efficiency", "batch-limited"), proj)

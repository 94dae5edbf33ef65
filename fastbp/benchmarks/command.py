"""``fastbp bench``: its arguments, a fresh process free of BLAS pins, and the run.

``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are read once, when OpenBLAS
loads, and a pinned core type can halve the speed of every matrix product.
The benchmarks measure what a user's machine does, so when either is set the
run restarts itself in a fresh process without them, unless
``--keep-blas-env`` says the pins are what is to be measured.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import subprocess
import sys
import time

from fastbp.backends import BACKEND_NAMES
from fastbp.benchmarks import SUITES

BLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: set in the restarted process: the pins its parent removed, as JSON
UNSET_VARIABLE = "FASTBP_BENCH_UNSET_BLAS_ENV"
DTYPES = ("float64", "float32")
#: share of the CPUs other processes may take during a suite before the run says so
BUSY = 0.1


def add_arguments(parser):
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="all",
                        help="which suite to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer shapes and repeats: every suite, shorter")
    parser.add_argument("--backend", choices=BACKEND_NAMES, action="append",
                        help="a fastbp backend to measure (repeat for more; default: every "
                             "available one)")
    parser.add_argument("--dtype", choices=DTYPES, action="append",
                        help="a dtype to measure (repeat for both; default: both)")
    parser.add_argument("--json", metavar="PATH", help="write the raw results and the machine")
    parser.add_argument("--plot", metavar="DIR", help="draw PNG plots into DIR (matplotlib)")
    parser.add_argument("--keep-blas-env", action="store_true",
                        help=f"measure with {' and '.join(BLAS_PINS)} as set, instead of "
                             "restarting without them")


def _argv(args) -> list:
    """The command line that reproduces ``args``."""
    argv = ["--suite", args.suite] + (["--quick"] if args.quick else [])
    for flag, values in (("--backend", args.backend), ("--dtype", args.dtype)):
        for value in values or ():
            argv += [flag, value]
    for flag, value in (("--json", args.json), ("--plot", args.plot)):
        if value:
            argv += [flag, value]
    return argv + (["--keep-blas-env"] if args.keep_blas_env else [])


def _gpus() -> list:
    """The CUDA devices this run could use, as the cupy backend and PyTorch describe them."""
    from fastbp.backends import backend_info

    found = []
    cupy = backend_info()["cupy"]
    if cupy["available"]:
        found.append({"via": "fastbp cupy backend",
                      **{k: v for k, v in cupy.items() if k != "available"}})
    torch = sys.modules.get("torch")  # asked only if a contender imported it
    if torch is not None and torch.cuda.is_available():
        found.append({"via": "torch", "name": torch.cuda.get_device_name(0)})
    return found


def _check_folder(flag, folder):
    """Refuse, before any measuring, a ``folder`` that could not be created or written into."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: cannot write into {folder} ({probe} is not a writable folder)")


def _check_outputs(args):
    """``--json`` and ``--plot`` are refused up front, not after minutes of measuring."""
    if args.json:
        if os.path.isdir(args.json):
            raise ValueError(f"--json {args.json} is a folder: give a file path")
        _check_folder("--json", os.path.dirname(os.path.abspath(args.json)))
    if args.plot:
        _check_folder("--plot", args.plot)
        try:
            import matplotlib.figure  # noqa: F401
        except ImportError:
            raise ImportError('--plot needs matplotlib: pip install "fastbp[bench]"') from None


def run(args) -> int:
    from fastbp.backends import available_backends, get_backend

    backends = list(dict.fromkeys(args.backend or available_backends()))
    for name in backends:
        get_backend(name)  # an unavailable one ends the run here, with its install hint
    _check_outputs(args)
    pins = {k: os.environ[k] for k in BLAS_PINS if k in os.environ}
    if pins and not args.keep_blas_env:
        shown = " ".join(f"{k}={v}" for k, v in pins.items())
        print(f"fastbp bench: restarting without {shown} (it pins OpenBLAS's kernels; "
              "--keep-blas-env keeps it)", file=sys.stderr, flush=True)
        env = {k: v for k, v in os.environ.items() if k not in BLAS_PINS}
        env[UNSET_VARIABLE] = json.dumps(pins)
        return subprocess.call([sys.executable, "-m", "fastbp", "bench", *_argv(args)], env=env)
    unset = json.loads(os.environ.pop(UNSET_VARIABLE, "{}"))

    from fastbp.benchmarks.settings import Settings
    from fastbp.benchmarks.timing import OtherLoad
    from fastbp.sysinfo import machine_info

    settings = Settings(backends=backends, dtypes=list(dict.fromkeys(args.dtype or DTYPES)),
                        quick=args.quick)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    command = " ".join(["fastbp", "bench", *_argv(args)])
    settings.progress("bench", f"{command}: backends {', '.join(backends)}, dtypes "
                      f"{', '.join(settings.dtypes)}")
    if pins and args.keep_blas_env:
        print(f"note: measured with {pins} as set (--keep-blas-env)\n")

    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    results, other_load = {}, {}
    for suite in suites:
        module = importlib.import_module(f"fastbp.benchmarks.{SUITES[suite]}")
        watch = OtherLoad()
        results[suite] = module.run(settings)
        print(module.table(results[suite]), flush=True)
        other_load[suite] = watch.share()
        if other_load[suite] is not None and other_load[suite] > BUSY:
            print(f"note: other processes took {other_load[suite]:.0%} of the CPUs during the "
                  f"{suite} suite; its times are unreliable: run it again on a quiet machine\n",
                  flush=True)

    record = {"command": command, "started": started.isoformat(timespec="seconds"),
              "duration_s": time.perf_counter() - clock, "quick": settings.quick,
              "backends": backends, "dtypes": settings.dtypes,
              "blas_env": {"unset": unset, "kept": pins if args.keep_blas_env else {}},
              "other_load": other_load,
              "machine": {**machine_info(), "gpu": _gpus()}, "results": results}
    if args.json:
        from fastbp.benchmarks.report import write_json

        write_json(args.json, record)
        print(f"results: {args.json}")
    if args.plot:
        from fastbp.benchmarks import plots

        for path in plots.draw(results, args.plot):
            print(f"plot: {path}")
    return 0

"""The ``fastbp`` command line: ``info``, ``gradcheck``, ``train`` and ``bench``.

Bad arguments and unavailable backends end with a one-line message on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

import fastbp
from fastbp.backends import BACKEND_NAMES


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, received {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, received {text}")
    return value


# ------------------------------------------------------------------- info
def cmd_info(args):
    from fastbp.distributed import mpi_info
    from fastbp.sysinfo import machine_info

    backends = fastbp.backend_info()  # creates the available backends, loading their BLAS
    machine = machine_info()
    mpi = mpi_info()
    if args.json:
        print(json.dumps({"version": fastbp.__version__, "backends": backends, **machine, "mpi": mpi},
                         indent=2, default=str))
        return 0
    cpu = machine["cpu"]
    print(f"fastbp {fastbp.__version__}  (python {machine['packages']['python']}, "
          f"numpy {machine['packages']['numpy']})")
    print(f"cpu: {cpu['model']}, {cpu['cores']} cores, {cpu['simd']}")
    print("backends:")
    for name, entry in backends.items():
        if entry["available"]:
            details = ", ".join(f"{k} {v}" for k, v in entry.items() if k != "available")
            print(f"  {name:6} available   {details}")
        else:
            print(f"  {name:6} unavailable {entry['reason']}")
    print("blas:")
    for lib in machine["blas"] or [{"filepath": "(threadpoolctl not installed: cannot list)"}]:
        print(f"  {lib.get('filepath')}")
        if "version" in lib:
            print(f"    {lib['internal_api']} {lib['version']}, kernels {lib['architecture']}, "
                  f"{lib['num_threads']} threads ({lib['threading_layer']})")
        if "warning" in lib:
            print(f"    WARNING: {lib['warning']}")
    if mpi["available"]:
        print(f"mpi: mpi4py {mpi['mpi4py']}, {mpi['library']} (MPI {mpi['standard']})")
    else:
        print(f"mpi: unavailable ({mpi['reason']})")
    for key, value in machine["environment"].items():
        print(f"env: {key}={value}")
    return 0


# -------------------------------------------------------------- gradcheck
def cmd_gradcheck(args):
    from fastbp.gradcheck import directional_check, gradient_check
    from fastbp.nets import MultiLayerNet

    net = MultiLayerNet(args.input, args.hidden, args.output, activation=args.activation,
                        weight_init_std=1.0, seed=args.seed, backend=args.backend,
                        dtype=args.dtype)
    rng = net.backend.rng(args.seed + 1)
    x = rng.standard_normal((args.batch, args.input))
    t = rng.integers(0, args.output, args.batch)
    sizes = "-".join(map(str, [args.input, *args.hidden, args.output]))
    print(f"gradient check: {sizes} {args.activation} net, batch {args.batch}, "
          f"backend {net.backend.name}, {net.dtype}")
    errors = gradient_check(net, x, t)
    for key, err in errors.items():
        print(f"  {key:4} relative error {err:.3e}")
    directional = directional_check(net, x, t)
    print(f"  directional check ({len(directional)} random directions): "
          f"max relative error {max(directional):.3e}")
    worst = max([*errors.values(), *directional])
    passed = worst <= args.tol
    print(f"{'PASS' if passed else 'FAIL'}: worst {worst:.3e} (tolerance {args.tol:.0e})")
    return 0 if passed else 1


# ---------------------------------------------------------------- parsing
def build_parser():
    parser = _Parser(prog="fastbp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastbp {fastbp.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = commands.add_parser("info", help="version, backends, BLAS kernels, threads, GPU")
    info.add_argument("--json", action="store_true", help="print the details as JSON")
    info.set_defaults(run=cmd_info)

    check = commands.add_parser("gradcheck", help="backprop against numerical gradients")
    check.add_argument("--backend", choices=BACKEND_NAMES, default=None)
    check.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    check.add_argument("--input", type=_positive_int, default=20)
    check.add_argument("--hidden", type=_positive_int, nargs="+", default=[10])
    check.add_argument("--output", type=_positive_int, default=5)
    check.add_argument("--activation", choices=("relu", "sigmoid"), default="relu")
    check.add_argument("--batch", type=_positive_int, default=8)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--tol", type=_positive_float, default=1e-6,
                       help="largest relative error that passes (default 1e-6)")
    check.set_defaults(run=cmd_gradcheck)

    from fastbp.train_cli import add_train_command  # light: data and nets load when it runs

    add_train_command(commands)

    from fastbp.benchmarks import command as bench_command  # light: the suites load when run

    bench = commands.add_parser("bench", help="benchmarks: backprop vs numerical gradients, "
                                "train step vs peers, kernels, start-up")
    bench_command.add_arguments(bench)
    bench.set_defaults(run=bench_command.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, ImportError) as exc:
        print(f"fastbp {args.command}: error: {exc}", file=sys.stderr)
        return 2

"""The ``fastbp`` command line: ``info``, ``gradcheck``, ``train`` and ``bench``.

Bad arguments and unavailable backends end with a one-line message on stderr
and exit status 2, never a traceback.

One module per command (``info``, ``gradcheck``, ``train``; ``bench`` is
:mod:`fastbp.benchmarks.command`, so it works from a plain install), each
with an ``add_*_command`` that registers it and a ``cmd_*`` that runs it;
the argparse types they share are in :mod:`fastbp.cli.arguments`.  No module
of this package imports this one.  The nets, the Trainer and the
benchmark suites are imported only when a command runs.
"""

from __future__ import annotations

import sys

from fastbp._version import __version__
from fastbp.cli.arguments import Parser
from fastbp.cli.gradcheck import add_gradcheck_command
from fastbp.cli.info import add_info_command
from fastbp.cli.train import add_train_command

__all__ = ["build_parser", "main"]


def build_parser():
    parser = Parser(prog="fastbp", description="The fastbp command line: info, gradcheck, train "
                    "and bench.")
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_info_command(commands)
    add_gradcheck_command(commands)
    add_train_command(commands)

    from fastbp.benchmarks import command as bench_command  # light: the suites load when run

    bench = commands.add_parser("bench", help="benchmarks: backprop vs numerical gradients, "
                                "train step and configurations vs peers, kernels, start-up, "
                                "data-parallel")
    bench_command.add_arguments(bench)
    bench.set_defaults(run=bench_command.run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, ImportError, NotImplementedError) as exc:
        print(f"fastbp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # a net or batch larger than this machine, named in one line
        print(f"fastbp {args.command}: error: out of memory: {exc}", file=sys.stderr)
        return 2

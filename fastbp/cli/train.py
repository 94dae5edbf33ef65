"""``fastbp train``: train a MultiLayerNet on a data set from the command line.

The defaults (digits, 100-100 ReLU net, Adam lr 0.001, batch 32, 40 epochs)
reach about 0.985 test accuracy in about a second of training on the numpy
backend.  The last line printed is always the result:
``train acc 1.0000  test acc 0.9861  0.0123 s/epoch``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy

from fastbp.backends import BACKEND_NAMES
from fastbp.checks import FLOAT_DTYPES
from fastbp.cli.arguments import non_negative_float, non_negative_int, positive_float, positive_int, ratio
from fastbp.data import DATASETS

#: --optimizer choice -> (class name in fastbp.optim, default lr)
OPTIMIZERS = {"sgd": ("SGD", 0.1), "momentum": ("Momentum", 0.01), "nesterov": ("Nesterov", 0.01),
              "adagrad": ("AdaGrad", 0.01), "rmsprop": ("RMSprop", 0.001), "adam": ("Adam", 0.001)}
_INIT_FOR_ACTIVATION = {"relu": "he", "sigmoid": "xavier"}


def add_train_command(commands):
    """Register ``fastbp train`` on the ``commands`` sub-parsers."""
    train = commands.add_parser("train", help="train a MultiLayerNet on toy, digits or MNIST data")
    train.add_argument("--dataset", choices=DATASETS, default="digits", help="default digits")
    train.add_argument("--data-dir", default=None,
                       help="directory of the MNIST files (default $FASTBP_DATA_DIR/<name>, "
                            "else ~/.cache/fastbp/<name>)")
    train.add_argument("--download", action="store_true",
                       help="fetch missing MNIST files (checked against known SHA-256 sums)")
    train.add_argument("--backend", choices=BACKEND_NAMES, default=None,
                       help="default $FASTBP_BACKEND, else numpy")
    train.add_argument("--dtype", choices=FLOAT_DTYPES, default="float64", help="default float64")
    train.add_argument("--hidden", type=positive_int, nargs="+", default=[100, 100],
                       help="hidden layer sizes (default 100 100)")
    train.add_argument("--activation", choices=tuple(_INIT_FOR_ACTIVATION), default="relu",
                       help="default relu")
    train.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adam", help="default adam")
    train.add_argument("--lr", type=positive_float, default=None,
                       help="learning rate (default: sgd 0.1, momentum/nesterov/adagrad 0.01, "
                            "rmsprop/adam 0.001)")
    train.add_argument("--epochs", type=positive_int, default=40, help="default 40")
    train.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    train.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                       help="L2 penalty lambda (default 0)")
    train.add_argument("--dropout", type=ratio, default=None, metavar="RATIO",
                       help="dropout after each hidden layer, dropping this fraction")
    train.add_argument("--batchnorm", action="store_true", help="BatchNorm after each hidden Affine")
    train.add_argument("--seed", type=non_negative_int, default=0, help="default 0")
    train.add_argument("--save", default=None, metavar="PATH", help="write the trained parameters here")
    train.add_argument("--plot", default=None, metavar="PATH",
                       help="draw the loss and accuracy curves into this file (.png, .pdf, .svg, "
                            "...: the format from the suffix)")
    train.add_argument("--quiet", action="store_true", help="print only the result line")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks of mpiexec (the mpi extra); rank 0 "
                            "prints, saves and plots")
    train.set_defaults(run=cmd_train)


def _optimizer(name, lr):
    import fastbp.optim as optim

    class_name, default_lr = OPTIMIZERS[name]
    return getattr(optim, class_name)(default_lr if lr is None else lr)


def _communicator(distributed):
    """All ranks of mpiexec for ``--distributed`` (an unhandled error on one aborts them all)."""
    from fastbp.distributed import SingleProcess, install_abort_on_exception, world

    if not distributed:
        return SingleProcess()
    comm = world(required=True)
    install_abort_on_exception(comm)
    return comm


def _check_output_path(flag, path):
    """Refuse an unwritable output before training rather than after it."""
    directory = Path(path).resolve().parent
    if Path(path).is_dir():
        raise ValueError(f"{flag} {path}: is a directory; give the name of a file to write")
    if not directory.is_dir():
        raise ValueError(f"{flag} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{flag} {path}: directory {directory} is not writable")


def cmd_train(args):
    from fastbp.train import Trainer, save_params

    optimizer = _optimizer(args.optimizer, args.lr)
    comm = _communicator(args.distributed)
    if comm.rank != 0:
        args.quiet = True
    (x_train, t_train), (x_test, t_test), net = _start(args, comm)
    if not args.quiet:
        sizes = "-".join(map(str, [x_train.shape[1], *args.hidden, net.output_size]))
        print(f"training a {sizes} {args.activation} net on {args.dataset} ({len(x_train)} train, "
              f"{len(x_test)} test), backend {net.backend.name}, {net.dtype}, {args.optimizer} "
              f"lr {optimizer.lr:g}, batch {args.batch_size}, {args.epochs} epochs", flush=True)
    trainer = Trainer(net, optimizer, x_train, t_train, x_test, t_test, epochs=args.epochs,
                      batch_size=args.batch_size, seed=args.seed, verbose=not args.quiet,
                      comm=comm)
    try:
        with numpy.errstate(all="ignore"):  # a diverging run is named below, not by NumPy's warnings
            history = trainer.fit()
    except FloatingPointError as exc:  # diverged: one line, and no checkpoint or plot of it
        rank = f" (rank {comm.rank})" if comm.size > 1 else ""
        print(f"fastbp train: error{rank}: {exc} (--lr sets the learning rate)", file=sys.stderr,
              flush=True)
        if comm.size > 1:  # the other ranks wait in a collective: end them all
            comm.abort(1)
        return 1
    if comm.rank != 0:  # rank 0 alone writes and reports
        return 0
    if args.save is not None:
        save_params(net, args.save)
        if not args.quiet:
            print(f"saved the parameters to {args.save}")
    if args.plot is not None:
        plot_history(history, args.plot, title=f"{args.dataset}, {args.optimizer} lr {optimizer.lr:g}")
        if not args.quiet:
            print(f"wrote the curves to {args.plot}")
    seconds = sum(history["epoch_time"]) / len(history["epoch_time"])
    print(f"train acc {history['train_acc'][-1]:.4f}  test acc {history['test_acc'][-1]:.4f}  "
          f"{seconds:.3g} s/epoch")
    return 0


def _start(args, comm):
    """The checks, the data and the net; ``((x, t) train, (x, t) test, net)``.

    With several ranks every rank reports how its start went, in one allgather
    before any other collective: a rank that stopped alone would leave the
    others waiting in the first one.  On a failure rank 0 names each failing
    rank in its error, and the others end with the same exit status, silently.
    """
    try:
        started, problem = _start_here(args, comm), None
    except (ValueError, ImportError, NotImplementedError) as exc:
        if comm.size == 1:
            raise  # main prints it: one line, exit status 2
        started, problem = None, str(exc)
    if comm.size > 1:
        failed = [(rank, p) for rank, p in enumerate(comm.allgather(problem)) if p is not None]
        if failed and comm.rank == 0:
            raise ValueError("; ".join(f"rank {rank}: {p}" for rank, p in failed))
        if failed:
            raise SystemExit(2)
    return started


def _start_here(args, comm):
    from fastbp.data import load_dataset
    from fastbp.nets import MultiLayerNet

    if comm.rank == 0:  # rank 0 alone writes
        for flag, path in (("--save", args.save), ("--plot", args.plot)):
            if path is not None:
                _check_output_path(flag, path)
        if args.plot is not None:
            _check_plot_format(args.plot)
    (x_train, t_train), (x_test, t_test) = load_dataset(
        args.dataset, data_dir=args.data_dir, download=args.download)
    n_classes = int(max(t_train.max(), t_test.max())) + 1
    net = MultiLayerNet(x_train.shape[1], args.hidden, n_classes, activation=args.activation,
                        weight_init_std=_INIT_FOR_ACTIVATION[args.activation],
                        weight_decay_lambda=args.weight_decay, seed=args.seed,
                        use_dropout=args.dropout is not None,
                        dropout_ratio=0.5 if args.dropout is None else args.dropout,
                        use_batchnorm=args.batchnorm, backend=args.backend, dtype=args.dtype)
    return (x_train, t_train), (x_test, t_test), net


def _check_plot_format(path):
    """matplotlib is installed and writes the format of ``path``'s suffix (PNG without one)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as exc:
        raise ImportError(f'--plot needs matplotlib: pip install "fastbp[train]" ({exc})') from None
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix[1:].lower()
    if suffix and suffix not in formats:
        raise ValueError(f"--plot {path}: matplotlib writes no .{suffix} files; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")


def plot_history(history, path, title=""):
    """Loss and accuracy per epoch, side by side, in the format of ``path``'s suffix (no
    display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = range(1, len(history["loss"]) + 1)
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, history["loss"])
    loss_ax.set(xlabel="epoch", ylabel="mean training loss", yscale="log")
    acc_ax.plot(epochs, history["train_acc"], label="train")
    if history["test_acc"]:
        acc_ax.plot(epochs, history["test_acc"], label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy")
    acc_ax.legend()
    if title:
        fig.suptitle(title)
    # the format from the name's suffix; PNG without one (matplotlib would add ".png")
    fig.savefig(path, dpi=100, format=None if Path(path).suffix else "png")

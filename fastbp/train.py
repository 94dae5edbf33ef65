"""Training loops and checkpoints: ``Trainer``, ``save_params``, ``load_params``.

The data move to the net's backend once; each step is the net's
``train_step`` (the backend's fast path) and its loss stays on the device
until the epoch ends, so a GPU is never made to wait inside the loop.
Checkpoints are ``.npz`` files written atomically and loaded only after
every array has been checked, so a failure changes neither the file on disk
nor the net in memory.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy

from fastbp.atomic import replacing
from fastbp.backends import to_numpy
from fastbp.checks import check_count, check_real, check_seed
from fastbp.distributed import DataParallel, SingleProcess, check_same_run
from fastbp.nets import NonFiniteLossError

#: the layout of the checkpoint files this module writes
CHECKPOINT_FORMAT = 1
_PARAM, _BUFFER = "param/", "buffer/"
_CONFIG, _FORMAT = "config", "format"
#: config entries added after format 1 was fixed, with the value older files imply
_LATER_CONFIG = {"batchnorm_momentum": 0.9, "batchnorm_eps": 1e-6}


class Trainer:
    """Mini-batch training of ``net`` with ``optimizer`` for ``epochs`` passes over the data.

    Each epoch visits every sample once, in the order of a permutation drawn
    from ``numpy.random.default_rng(seed)`` (the last batch may be smaller),
    so a seeded run repeats exactly.  After each epoch it records in
    ``history``: ``loss`` (mean training loss of the epoch's steps),
    ``train_acc``, ``test_acc`` (empty without test data) and ``epoch_time``
    (seconds of training, evaluation excluded).  ``eval_sample`` limits the
    per-epoch accuracies to the first that many samples of each set.

    A NaN or inf loss stops training with a ``FloatingPointError`` naming the
    epoch, the batch and the learning rate, before that step's update; so do
    parameters that are no longer finite at the end of an epoch.  ``history``
    keeps the epochs finished before.  On the CPU each step's loss is checked
    (one scalar comparison); on a GPU that would wait for the device at every
    step, so the steps run unchecked and the epoch's losses are checked at
    once when it ends: there, the updates after the first bad step of that
    epoch have been applied when the error is raised.

    ``comm`` (``fastbp.distributed.world()``) trains data-parallel: every
    rank holds the whole data set and the same permutation, and takes its
    contiguous share of each global batch of ``batch_size`` samples (shares
    differ by at most one; a last global batch smaller than the number of
    ranks joins the one before, so every sample is seen exactly once per
    epoch).  See :class:`~fastbp.distributed.DataParallel` for the rest.
    The reported loss and accuracies are averaged over the ranks, and only
    rank 0 shows progress.  A rank that raises leaves the others waiting:
    run under ``python -m mpi4py`` (or ``install_abort_on_exception``).
    """

    def __init__(self, net, optimizer, x_train, t_train, x_test=None, t_test=None, epochs=10,
                 batch_size=100, seed=0, verbose=True, eval_sample=None, comm=None):
        name = type(self).__name__
        self.epochs = check_count(name, "epochs", epochs)
        self.batch_size = check_count(name, "batch_size", batch_size)
        self.eval_sample = check_count(name, "eval_sample", eval_sample, allow_none=True)
        if (x_test is None) != (t_test is None):
            raise ValueError(f"{name}: pass both x_test and t_test or neither, received "
                             f"x_test={'None' if x_test is None else 'an array'} and "
                             f"t_test={'None' if t_test is None else 'an array'}")
        self.net, self.optimizer = net, optimizer
        self.comm = SingleProcess() if comm is None else comm
        self.seed, self.verbose = check_seed(name, seed), verbose and self.comm.rank == 0
        self.x_train, self.t_train = self._to_device("x_train", x_train, "t_train", t_train)
        #: the fewest samples a step may take: one per rank, two per rank for BatchNorm
        self._least = self.comm.size * (2 if getattr(net, "use_batchnorm", False) else 1)
        if self.batch_size < self._least or len(self.x_train) < self._least:
            per_rank = " (2 per rank: BatchNorm normalises over each rank's part)" \
                if self._least > self.comm.size else ""
            raise ValueError(f"{name}: batch_size and the number of samples must be at least "
                             f"{self._least}{per_rank} with {self.comm.size} rank(s), received "
                             f"batch_size {self.batch_size} and {len(self.x_train)} samples")
        if x_test is None:
            self.x_test = self.t_test = None
        else:
            self.x_test, self.t_test = self._to_device("x_test", x_test, "t_test", t_test)
        self.history = {"loss": [], "train_acc": [], "test_acc": [], "epoch_time": []}
        if self.comm.size > 1:  # every rank must cut the same global batches
            drawn = int(numpy.random.SeedSequence().entropy) if self.seed is None else None
            root_draw = check_same_run(self.comm, {
                "x_train": tuple(self.x_train.shape), "t_train": tuple(self.t_train.shape),
                "x_test": None if x_test is None else tuple(self.x_test.shape),
                "t_test": None if t_test is None else tuple(self.t_test.shape),
                "epochs": self.epochs, "batch_size": self.batch_size,
                "seed": self.seed, "eval_sample": self.eval_sample}, shared=drawn)
            if self.seed is None:  # unseeded: rank 0's random permutations, on every rank
                self.seed = root_draw
        self.parallel = DataParallel(self.comm, net)  # rank 0's weights everywhere, checked
        #: the epochs' permutations: one stream over every call of fit, so two calls of
        #: fit train as one call of twice the epochs would
        self._rng = numpy.random.default_rng(self.seed)

    def _to_device(self, x_name, x, t_name, t):
        """Inputs in the net's dtype, class indices as integers, one-hot rows in the net's dtype."""
        be, name = self.net.backend, type(self).__name__
        x, t = be.asarray(x), be.asarray(t)
        check_real(name, x_name, x)
        for array_name, array in ((x_name, x), (t_name, t)):
            if array.ndim == 0:
                raise ValueError(f"{name}: {array_name} must be an array with one row per sample, "
                                 f"received a scalar")
        x = x.astype(self.net.dtype, copy=False)
        if t.ndim == 1 and t.dtype.kind not in "iu":
            raise ValueError(f"{name}: {t_name} must hold integer class indices "
                             f"(or one-hot rows), received dtype {t.dtype}")
        t = t.astype(numpy.int64 if t.ndim == 1 else self.net.dtype, copy=False)
        if len(x) != len(t):
            raise ValueError(f"{type(self).__name__}: {x_name} and {t_name} must have the same "
                             f"number of samples, received {len(x)} and {len(t)}")
        if len(x) == 0:
            raise ValueError(f"{type(self).__name__}: {x_name} must hold at least one sample, "
                             f"received shape {tuple(x.shape)}")
        # checked once here, so the steps skip the label check (on a GPU it waits for the device)
        self.net._prepare(x, t, where=f"Trainer({x_name}, {t_name})")
        for name, array in ((x_name, x), (t_name, t)):
            if not be.all_finite(array):
                raise ValueError(f"{type(self).__name__}: {name} holds NaN or inf; remove or "
                                 f"replace those samples before training")
        return x, t

    def _batches(self, n):
        """``(start, stop)`` of each global batch; a remainder too small for a step (fewer
        samples than ranks, or than two per rank with BatchNorm) joins the last."""
        bounds = [*range(0, n, self.batch_size), n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self._least:
            del bounds[-2]
        return list(zip(bounds[:-1], bounds[1:]))

    def fit(self):
        """Train for ``epochs`` epochs; returns ``history``."""
        n = len(self.x_train)
        batches = self._batches(n)
        rng, done = self._rng, len(self.history["loss"])  # epochs of earlier calls
        last = done + self.epochs
        bar = _progress_bar(self.epochs * len(batches), self.verbose)
        be, parallel = self.net.backend, self.parallel
        check_each_step = not be.gpu  # on a GPU the check would wait for the device
        own_hook = self.net.gradient_hook  # the user's, kept: it sees the averaged gradients
        self.net.gradient_hook = _chained(parallel.gradient_hook, own_hook)
        try:
            for epoch in range(done + 1, last + 1):
                if bar is not None:
                    bar.set_description(f"epoch {epoch}/{last}")
                order = be.asarray(rng.permutation(n))
                start = time.perf_counter()
                total, losses = 0.0, []
                for step, (begin, end) in enumerate(batches, start=1):
                    batch = parallel.shard(order[begin:end])
                    try:
                        loss = self.net.train_step(self.x_train[batch], self.t_train[batch],
                                                   self.optimizer, check_labels=False,
                                                   check_finite=check_each_step)
                    except NonFiniteLossError as exc:
                        parallel.abandon_step()  # the other ranks wait in this step's Allreduce
                        raise self._diverged(epoch, step, len(batches), exc.loss) from None
                    losses.append(loss)
                    total = total + loss * len(batch)  # stays on the device
                    if bar is not None:
                        bar.update()
                local = float(total)  # the epoch's one synchronisation
                if not math.isfinite(local):  # steps that ran unchecked
                    values = be.to_numpy(be.xp.stack(losses))
                    first = int(numpy.flatnonzero(~numpy.isfinite(values))[0])
                    raise self._diverged(epoch, first + 1, len(batches), values[first])
                parallel.average_buffers()
                self._check_params(epoch)  # after the averaging: every rank sees the same
                seconds = time.perf_counter() - start
                loss = parallel.total(local) / n
                train_acc, test_acc = self._evaluate()
                # appended together: an error or Ctrl-C in the evaluation leaves every list
                # of history one entry per finished epoch
                self.history["epoch_time"].append(seconds)
                self.history["loss"].append(loss)
                self.history["train_acc"].append(train_acc)
                if test_acc is not None:
                    self.history["test_acc"].append(test_acc)
                if bar is not None:
                    bar.set_postfix(self.summary(), refresh=False)
        finally:
            self.net.gradient_hook = own_hook
            if bar is not None:
                bar.close()
        return self.history

    def _diverged(self, epoch, step, steps, loss):
        return FloatingPointError(
            f"Trainer: the loss of epoch {epoch}, batch {step} of {steps}, is {float(loss)}, not "
            f"a finite number; training stopped ({epoch - 1} epochs finished, in history). The "
            f"learning rate is {self.optimizer.lr:g}: lower it")

    def _check_params(self, epoch):
        """Refuse to go on from an update that overflowed although its loss was finite, or
        from BatchNorm statistics that did (inputs so large their variance is inf)."""
        be = self.net.backend
        for kind, arrays in (("params", self.net.params), ("buffers", self.net.buffers)):
            if be.all_finite(arrays.flat):  # every array is a view of it: one pass
                continue
            bad = next(k for k, p in arrays.items() if not be.all_finite(p))
            cause = (f"the last updates overflowed. The learning rate is "
                     f"{self.optimizer.lr:g}: lower it" if kind == "params" else
                     "the batches' statistics overflowed: scale the inputs")
            raise FloatingPointError(f"Trainer: after epoch {epoch} {kind}[{bad!r}] holds NaN "
                                     f"or inf: {cause}")

    def _evaluate(self):
        """``(train_acc, test_acc)`` of the net now; ``test_acc`` None without test data."""
        train_acc = self._accuracy(self.x_train, self.t_train)
        if self.x_test is None:
            return train_acc, None
        return train_acc, self._accuracy(self.x_test, self.t_test)

    def _accuracy(self, x, t):
        """Accuracy on the first ``eval_sample`` samples, each rank scoring its share."""
        n = min(len(x), self.eval_sample or len(x))
        if self.comm.size == 1:
            return self.net.accuracy(x[:n], t[:n])
        shard = self.parallel.shard(numpy.arange(n))
        if len(shard) == 0:
            return self.parallel.total(0.0) / n
        local = slice(int(shard[0]), int(shard[-1]) + 1)
        return self.parallel.total(self.net.accuracy(x[local], t[local]) * len(shard)) / n

    def summary(self) -> dict:
        """The last epoch's numbers, rounded for display."""
        h = self.history
        out = {"loss": f"{h['loss'][-1]:.4f}", "train_acc": f"{h['train_acc'][-1]:.4f}"}
        if h["test_acc"]:
            out["test_acc"] = f"{h['test_acc'][-1]:.4f}"
        return out


def _progress_bar(total, verbose):
    """A tqdm bar on stderr when asked for and stderr is a terminal; None otherwise."""
    if not verbose or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional (the "train" extra): train without a bar
        return None
    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=True)


def _chained(first, then):
    """One gradient hook running ``first`` and then ``then`` (either may be None)."""
    if first is None or then is None:
        return then if first is None else first

    def both(grads):
        first(grads)
        then(grads)
    return both


# ------------------------------------------------------------ checkpoints
def save_params(net, path):
    """Write ``net``'s parameters, buffers and config to the ``.npz`` file ``path``, atomically.

    The file written is exactly ``path`` (no ``.npz`` is appended).  The data
    go to a temporary file in the same directory, are flushed to disk, and
    then replace ``path`` in one rename: a crash or an error leaves the
    previous checkpoint intact.  A net whose parameters or buffers hold NaN
    or inf is refused with a ``ValueError`` naming the array, and nothing is
    written.
    """
    path = Path(path)
    arrays = {_PARAM + key: to_numpy(value) for key, value in net.params.items()}
    arrays.update({_BUFFER + key: to_numpy(value) for key, value in net.buffers.items()})
    for key, value in arrays.items():
        if not numpy.isfinite(value).all():
            kind, name = key.split("/")
            raise ValueError(f"save_params({str(path)!r}): {kind}s[{name!r}] holds NaN or inf; a "
                             "diverged net is not saved (nothing was written)")
    arrays[_CONFIG] = numpy.array(json.dumps(net.config(), sort_keys=True))
    arrays[_FORMAT] = numpy.array(CHECKPOINT_FORMAT)
    with replacing(path) as (f, _):
        numpy.savez(f, **arrays)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, or does not fit the net it is loaded into."""


def load_params(net, path):
    """Restore a checkpoint written by ``save_params`` into ``net``, in place.

    Works across backends and casts to the net's dtype.  Everything is read
    and checked first (format, architecture, keys, shapes, finite values);
    only then are the values copied into the existing arrays
    (``net.params[k][...] = v``), so the layers sharing them see the new
    values and a refused file changes nothing.  The architecture is
    ``net.architecture()``: a net trained with dropout or weight decay loads
    into one without.
    """
    path = Path(path)
    where = f"load_params({str(path)!r})"
    config, saved = _read_checkpoint(path, where)
    config = {**_LATER_CONFIG, **config}
    for key, expected in net.architecture().items():
        if config.get(key) != expected:
            raise CheckpointError(f"{where}: the checkpoint is of another architecture: {key} is "
                                  f"{config.get(key)!r} in the file, this net expects "
                                  f"{expected!r}")
    staged = []
    for prefix, targets in ((_PARAM, net.params), (_BUFFER, net.buffers)):
        stored = {key[len(prefix):]: value for key, value in saved.items() if key.startswith(prefix)}
        if set(stored) != set(targets):
            raise CheckpointError(f"{where}: expected {prefix[:-1]} arrays {sorted(targets)}, "
                                  f"received {sorted(stored)}")
        for key, target in targets.items():
            value = stored[key]
            if value.shape != target.shape or value.dtype.kind not in "fiub":
                raise CheckpointError(f"{where}: {prefix}{key} must be a numeric array of shape "
                                      f"{tuple(target.shape)}, received {value.dtype} of shape "
                                      f"{value.shape}")
            with numpy.errstate(over="ignore"):  # a float32 net: overflow is caught below
                value = value.astype(target.dtype)
            if not numpy.isfinite(value).all():
                raise CheckpointError(f"{where}: {prefix}{key} holds NaN or inf in "
                                      f"{target.dtype}; nothing was loaded")
            staged.append((target, net.backend.asarray(value)))
    for target, value in staged:
        target[...] = value


def _read_checkpoint(path: Path, where):
    """``(config, arrays)`` of the file at ``path``; a clear error for anything not in our format."""
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            saved = {key: archive[key] for key in archive.files}
    except Exception as exc:  # damage shows as BadZipFile, ValueError, EOFError, zlib.error ...
        raise CheckpointError(f"{where}: the file is damaged or not an .npz checkpoint "
                              f"({type(exc).__name__}: {exc}); save it again with "
                              "fastbp.save_params") from None
    if _FORMAT not in saved or _CONFIG not in saved:
        raise CheckpointError(f"{where}: not a fastbp checkpoint (no {_FORMAT!r} and {_CONFIG!r} "
                              "entries); write one with fastbp.save_params")
    version = saved.pop(_FORMAT)
    if version.shape != () or version.item() != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where}: checkpoint format {version.tolist()!r}, this fastbp "
                              f"reads format {CHECKPOINT_FORMAT}")
    try:
        config = json.loads(str(saved.pop(_CONFIG)))
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, expected an object")
    except ValueError as exc:
        raise CheckpointError(f"{where}: its config entry is damaged ({exc}); save it again "
                              "with fastbp.save_params") from None
    return config, saved

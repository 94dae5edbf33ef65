"""Data-parallel training over MPI: a small communicator facade on mpi4py.

``world()`` gives an :class:`MPICommunicator` when the process runs under an
MPI launcher with more than one rank, and a :class:`SingleProcess`
communicator (rank 0 of 1, every operation a no-op) otherwise, so the same
training code runs with and without ``mpiexec``.  mpi4py is imported only
inside these functions: ``import fastbp.distributed`` stays light.

Collectives move arrays with mpi4py's uppercase buffer API (no pickling);
only the start-up check of the nets pickles a small description.

A rank that raises while the others wait in a collective leaves them waiting
forever.  Either run ``python -m mpi4py -m fastbp ...`` (mpi4py's run mode
aborts every rank on an unhandled exception) or call
:func:`install_abort_on_exception`.
"""

from __future__ import annotations

import os
import reprlib
import sys

import numpy

INSTALL_HINT = ('pip install "fastbp[mpi]" (on a cluster, install mpi4py against the site\'s MPI '
                'instead: MPICC=mpicc pip install --no-binary mpi4py mpi4py)')
#: launcher variables giving the number of ranks (MPICH/Intel MPI, Open MPI, MVAPICH)
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
#: thread settings the user may have chosen; any of them set means "leave threads alone"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
_GPU_MESSAGE = ("data-parallel training on the cupy backend needs NCCL (cupy.cuda.nccl, one GPU "
                "per rank), which fastbp does not implement yet (not tested on this machine); "
                "fastbp never hands a GPU pointer to MPI: the PyPI MPI wheels are not CUDA-aware. "
                "Use --backend numpy or numba for distributed training")

_world = None  # the MPICommunicator, made once: its set-up is a collective


class MPIUnavailableError(ImportError):
    """Distributed training was asked for, but mpi4py (or its MPI library) cannot be loaded."""


def _import_mpi():
    """``mpi4py.MPI``, or MPIUnavailableError saying why not and how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailableError(f"mpi4py is not installed: {INSTALL_HINT}") from exc
    except RuntimeError as exc:  # mpi4py is there, its MPI library is not
        raise MPIUnavailableError(f"mpi4py cannot load an MPI library ({exc}): {INSTALL_HINT}") from exc
    return MPI


def _library(MPI) -> str:
    """The MPI library's name and version: the first line of its report, spaces collapsed."""
    return " ".join(MPI.Get_library_version().splitlines()[0].split())


def _launcher_size() -> int:
    """Ranks announced by an MPI launcher's environment (1 when none): read without mpi4py."""
    for var in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def world(required=False):
    """The communicator of all ranks, or a SingleProcess one outside MPI.

    ``required=True`` (distributed training explicitly asked for) raises
    MPIUnavailableError when mpi4py is missing.  So does a launch by
    ``mpiexec -n N`` with N > 1 without mpi4py: falling back would make every
    rank train alone and write its own checkpoints; as does an mpiexec from
    another MPI than mpi4py's (each rank would see a world of 1).
    """
    global _world
    if _world is not None:
        return _world
    try:
        MPI = _import_mpi()
    except MPIUnavailableError as exc:
        ranks = _launcher_size()
        if ranks == 1 and not required:
            return SingleProcess()
        launched = f" (this process is one of {ranks} ranks started by an MPI launcher)" if ranks > 1 else ""
        raise MPIUnavailableError(f"fastbp: distributed training needs mpi4py{launched}; {exc}") from exc
    if MPI.COMM_WORLD.Get_size() == 1:
        if _launcher_size() > 1:  # each rank would train alone
            raise MPIUnavailableError(
                f"fastbp: this process is one of {_launcher_size()} ranks started by an MPI "
                f"launcher, but mpi4py's MPI ({_library(MPI)}) "
                "sees 1: mpiexec and mpi4py come from different MPI installations; use the "
                "mpiexec of the MPI that mpi4py loads (python -m mpi4py --mpi-library)")
        return SingleProcess()
    _world = MPICommunicator(MPI.COMM_WORLD)
    limit_threads(_world.local_size)
    return _world


def _check_flat(flat):
    """The contract of allreduce_mean: one contiguous 1-D float32/float64 buffer."""
    if (getattr(flat, "ndim", None) != 1 or flat.dtype not in _FLOATS
            or not flat.flags.c_contiguous):
        raise ValueError(f"allreduce_mean: expected a C-contiguous 1-D float32 or float64 array, "
                         f"received {type(flat).__name__} of shape {getattr(flat, 'shape', None)}, "
                         f"dtype {getattr(flat, 'dtype', None)}")


def _host_buffer(x, where):
    """``x`` if MPI may read it in place: a contiguous host array, never a GPU pointer."""
    if hasattr(x, "__cuda_array_interface__"):
        raise NotImplementedError(f"{where}: {_GPU_MESSAGE}")
    if not isinstance(x, numpy.ndarray) or not x.flags.c_contiguous:
        raise ValueError(f"{where}: expected a C-contiguous numpy array, received "
                         f"{type(x).__name__}")
    return x


class SingleProcess:
    """One process, no MPI: every collective is the identity, so the same code runs alone."""

    rank, size, local_size = 0, 1, 1

    def allreduce_mean(self, flat):
        """The mean over one rank is the array itself."""
        _check_flat(flat)
        return flat

    def allreduce_mean_scalar(self, value) -> float:
        return float(value)

    def allgather(self, obj) -> list:
        return [obj]

    def broadcast(self, arrays, root=0):
        return arrays

    def barrier(self):
        pass

    def abort(self, status=1):
        raise SystemExit(status)


class MPICommunicator:
    """An mpi4py communicator: in-place buffer collectives, one message per call."""

    def __init__(self, comm):
        from mpi4py import MPI

        self._MPI, self._comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()  # ranks sharing this machine's cores
        node.Free()

    def allreduce_mean(self, flat):
        """Average ``flat`` over all ranks in place: one Allreduce(SUM), then a divide.

        Called once per step on the net's flat gradient buffer; the dtype is kept.
        """
        _check_flat(flat)
        self._comm.Allreduce(self._MPI.IN_PLACE, _host_buffer(flat, "allreduce_mean"),
                             op=self._MPI.SUM)
        flat /= self.size
        return flat

    def allreduce_mean_scalar(self, value) -> float:
        """The mean of a number (a loss, an accuracy) over all ranks."""
        buf = numpy.array([value], dtype=numpy.float64)
        self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return float(buf[0]) / self.size

    def allgather(self, obj) -> list:
        """Every rank's small picklable ``obj``, in rank order (start-up checks only)."""
        return self._comm.allgather(obj)

    def broadcast(self, arrays, root=0):
        """Overwrite each array with root's, in place; every rank passes the same shapes in order."""
        for i, x in enumerate(arrays):
            self._comm.Bcast(_host_buffer(x, f"broadcast (array {i})"), root=root)
        return arrays

    def barrier(self):
        self._comm.Barrier()

    def abort(self, status=1):
        """End every rank now (the others may be blocked in a collective)."""
        self._comm.Abort(status)


def limit_threads(ranks_on_node) -> int | None:
    """Give each rank its share of this machine's cores for BLAS and numba threads.

    Ranks that each start a thread per core oversubscribe the machine many
    times over.  Returns the thread count set, or None when the user set any
    of OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS (then nothing changes).  Libraries
    loaded later read the variables set here; numba is not imported for this.
    """
    if any(os.environ.get(var) for var in _THREAD_VARS):
        return None
    from fastbp.sysinfo import usable_cpus

    cores = os.cpu_count() or 1
    visible = usable_cpus()
    threads = max(1, min(visible, cores // max(1, ranks_on_node)))  # min: the launcher may bind
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threads


def describe_net(net) -> dict:
    """What must be equal on every rank: architecture, dtype, backend, parameter shapes and count."""
    return {
        **net.config(),
        "dtype": net.dtype.name,
        "backend": net.backend.name,
        "params": [(key, tuple(net.params[key].shape)) for key in sorted(net.params)],
        "buffers": [(key, tuple(net.buffers[key].shape)) for key in sorted(net.buffers)],
        "parameter count": sum(int(p.size) for p in net.params.values()),
    }


def _differences(mine: dict, root: dict) -> str:
    """'key (mine vs root's)' for every entry that differs, in root's order."""
    return ", ".join(f"{key} ({reprlib.repr(mine.get(key))} vs {reprlib.repr(root.get(key))})"
                     for key in {**root, **mine} if mine.get(key) != root.get(key))


def check_same_net(comm, net):
    """Raise ValueError on every rank if any rank's net differs from rank 0's.

    Run at start-up, before any step: a mismatched buffer in a collective
    truncates, corrupts or hangs instead of failing clearly.
    """
    _refuse_differences(comm.allgather(describe_net(net)), "the nets differ across ranks")


def _refuse_differences(described, what):
    """Raise ValueError naming every rank whose description differs from rank 0's."""
    problems = [f"rank {r} differs from rank 0 in {_differences(d, described[0])}"
                for r, d in enumerate(described) if d != described[0]]
    if problems:
        raise ValueError(f"fastbp: {what}: " + ". ".join(problems))


def _seed_key(seed):
    """``seed`` as a value equal on two ranks exactly when it gives the same permutations."""
    if isinstance(seed, numpy.random.Generator):
        return ("Generator", repr(seed.bit_generator.state))
    if isinstance(seed, numpy.random.SeedSequence):
        return ("SeedSequence", seed.entropy, tuple(seed.spawn_key))
    return seed if seed is None or numpy.ndim(seed) == 0 else ("sequence", numpy.asarray(seed).tolist())


def check_same_run(comm, description: dict, shared=None):
    """Raise ValueError on every rank if any rank's ``description`` (data set shapes, batch
    size, epochs, seed: what fixes the global batches) differs from rank 0's; else rank 0's
    ``shared``.

    Each rank takes its share of the same seeded permutation: a rank with other sizes
    runs other steps (its collectives mismatch), one with another seed other samples.
    """
    if "seed" in description:
        description = {**description, "seed": _seed_key(description["seed"])}
    gathered = comm.allgather((description, shared))
    _refuse_differences([d for d, _ in gathered], "every rank must train on the same data set "
                        "with the same batch_size, epochs and seed")
    return gathered[0][1]


def broadcast_net(comm, net, root=0):
    """Make every rank's parameters and buffers root's, in place (after checking the nets match)."""
    check_same_net(comm, net)
    comm.broadcast([net.params.flat, net.buffers.flat], root=root)


class DataParallel:
    """The data-parallel side of training ``net`` on every rank of ``comm`` (the Trainer's helper).

    At start the nets are checked to match and rank 0's parameters and
    buffers are broadcast; each Dropout layer draws from a generator seeded
    by its own seed and the rank, so masks differ across ranks and a seeded
    run repeats exactly.  Each global batch is split into contiguous shards
    whose sizes differ by at most one; ``gradient_hook`` weights a rank's
    mean gradient by its share of the batch and averages the flat gradient
    buffer with one Allreduce, so every rank applies the same update and the
    parameters stay identical.  BatchNorm uses each rank's batch statistics
    (as PyTorch DDP without SyncBatchNorm); ``average_buffers`` averages the
    running statistics, once an epoch.
    """

    def __init__(self, comm, net):
        self.comm, self.net = comm, net
        self._weight, self._reduced = 1.0, True
        if comm.size == 1:
            return
        if net.backend.gpu:
            raise NotImplementedError(f"DataParallel: {_GPU_MESSAGE}")
        broadcast_net(comm, net)
        for layer in net.layers.values():
            if getattr(layer, "seed", None) is not None and hasattr(layer, "rng"):
                layer.rng = net.backend.rng([layer.seed, comm.rank])

    def shard(self, batch):
        """This rank's contiguous part of the global ``batch`` (an index array or slice-able)."""
        n, size, rank = len(batch), self.comm.size, self.comm.rank
        local = batch[n * rank // size:n * (rank + 1) // size]
        self._weight = len(local) * size / n
        self._reduced = False  # a new step: its gradients are not averaged yet
        return local

    @property
    def gradient_hook(self):
        """The hook for ``net.gradient_hook``, or None on a single process."""
        return None if self.comm.size == 1 else self._average_gradients

    def _average_gradients(self, grads):
        self._reduced = True
        if self._weight != 1:  # an uneven split: weight the shard's mean by its size
            grads.flat *= self._weight
        self.comm.allreduce_mean(grads.flat)
        if not self.net.backend.all_finite(grads.flat):  # a rank abandoned the step (or overflowed)
            from fastbp.nets import NonFiniteLossError

            raise NonFiniteLossError(f"{type(self.net).__name__}.train_step (the gradient averaged "
                                     "over the ranks: another rank's loss was not finite)",
                                     float("nan"))

    def abandon_step(self):
        """Join the step's Allreduce with NaN after this rank's loss was not finite.

        The other ranks wait in it; the NaN reaches all of them, so every rank
        raises before its update and the parameters stay equal and untouched.
        """
        if self.comm.size > 1 and not self._reduced:
            self._reduced = True
            self.comm.allreduce_mean(numpy.full_like(self.net.grads.flat, numpy.nan))

    def total(self, value) -> float:
        """The sum of ``value`` over the ranks (a loss or a count of correct answers)."""
        return self.comm.allreduce_mean_scalar(value) * self.comm.size

    def average_buffers(self):
        """Running statistics averaged over the ranks (before evaluating or saving)."""
        if self.comm.size > 1 and len(self.net.buffers):
            self.comm.allreduce_mean(self.net.buffers.flat)


def install_abort_on_exception(comm):
    """On an unhandled exception, name the failing rank on stderr and abort every rank.

    Without this (or ``python -m mpi4py``) the other ranks wait in their next
    collective forever.  A no-op for a single process.
    """
    if comm.size == 1:
        return
    previous = sys.excepthook

    def abort_all(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        message = f"{exc_type.__name__}: {exc}".splitlines()[0]
        sys.stdout.flush()
        print(f"fastbp: rank {comm.rank} failed: {message}", file=sys.stderr, flush=True)
        comm.abort(1)

    sys.excepthook = abort_all


def mpi_info() -> dict:
    """For ``fastbp info``: whether mpi4py loads, its version, the MPI library and standard."""
    try:
        MPI = _import_mpi()
    except MPIUnavailableError as exc:
        return {"available": False, "reason": str(exc)}
    import mpi4py

    major, minor = MPI.Get_version()
    return {"available": True, "mpi4py": mpi4py.__version__,
            "library": _library(MPI),
            "standard": f"{major}.{minor}"}

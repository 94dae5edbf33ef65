"""fastbp.distributed: the single-process communicator here, the MPI one under mpiexec.

The multi-process tests run real ``mpiexec`` jobs (skipped, with the reason,
where mpi4py or mpiexec is missing) and never hang: a job past its time limit
is killed with its whole process group and the test fails.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy
import pytest
from mpi_jobs import HAVE_MPI4PY, HAVE_NUMBA, LAUNCHER_VARS, clean_env, mpiexec, needs_mpi, write_script

from fastbp.distributed import (
    MPIUnavailableError,
    SingleProcess,
    broadcast_net,
    check_same_net,
    mpi_info,
    world,
)
from fastbp.nets import MultiLayerNet


def _expected_threads(ranks_on_node):
    return max(1, min(len(os.sched_getaffinity(0)), os.cpu_count() // ranks_on_node))


# ------------------------------------------------------------ one process
def test_world_outside_mpi_is_one_process_whose_collectives_change_nothing(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    comm = world()
    assert isinstance(comm, SingleProcess) and (comm.rank, comm.size) == (0, 1)
    flat = numpy.linspace(-1, 1, 7, dtype=numpy.float32)
    before = flat.copy()
    assert comm.allreduce_mean(flat) is flat
    assert flat.dtype == numpy.float32 and numpy.array_equal(flat, before)
    assert comm.allreduce_mean_scalar(numpy.float32(2.5)) == 2.5
    a = numpy.arange(6.0).reshape(2, 3)
    assert comm.broadcast([a])[0] is a and numpy.array_equal(a, numpy.arange(6.0).reshape(2, 3))
    comm.barrier()
    net = MultiLayerNet(4, [5], 3, seed=0, use_batchnorm=True)
    saved = {k: v.copy() for k, v in net.params.items()}
    check_same_net(comm, net)
    broadcast_net(comm, net)
    assert all(numpy.array_equal(net.params[k], saved[k]) for k in saved)


@pytest.mark.parametrize("bad", [numpy.zeros((2, 3)), numpy.zeros(4, dtype=numpy.float16),
                                 numpy.zeros(8)[::2], [0.0, 1.0]],
                         ids=["2-D", "float16", "strided", "list"])
def test_allreduce_mean_wants_one_contiguous_float_buffer(bad):
    with pytest.raises(ValueError, match="C-contiguous 1-D float32 or float64"):
        SingleProcess().allreduce_mean(bad)


@pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed")
def test_a_launcher_whose_ranks_mpi4py_cannot_see_is_an_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")  # as mpiexec from another MPI leaves it: mpi4py sees 1
    with pytest.raises(MPIUnavailableError, match="different MPI installations"):
        world()


def test_asking_for_mpi_without_mpi4py_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert isinstance(world(), SingleProcess)  # not asked for: the same code runs alone
    with pytest.raises(MPIUnavailableError, match=r'pip install "fastbp\[mpi\]"') as info:
        world(required=True)
    assert isinstance(info.value, ImportError) and "site's MPI" in str(info.value)
    # started by mpiexec -n 2: falling back would make each rank train alone
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(MPIUnavailableError, match="one of 2 ranks started by an MPI launcher"):
        world()
    info = mpi_info()
    assert info["available"] is False and 'pip install "fastbp[mpi]"' in info["reason"]


@pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed")
def test_mpi_info_names_mpi4py_and_the_library():
    import mpi4py

    info = mpi_info()
    assert info["available"] is True and info["mpi4py"] == mpi4py.__version__
    assert info["library"] and "\n" not in info["library"]
    major, minor = info["standard"].split(".")
    assert int(major) >= 3 and minor.isdigit()


def test_importing_fastbp_distributed_leaves_mpi4py_unimported():
    code = "import sys, fastbp, fastbp.distributed; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, env=clean_env())
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("user_setting", [{}, {"OMP_NUM_THREADS": "2"}], ids=["unset", "user-set"])
def test_limit_threads_shares_the_cores_unless_the_user_chose(user_setting):
    code = textwrap.dedent(f"""
        import json, os, sys
        {"import numba" if HAVE_NUMBA else ""}
        from threadpoolctl import threadpool_info
        from fastbp.distributed import limit_threads
        before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        threads = limit_threads(2)
        after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        numba = sys.modules["numba"].get_num_threads() if "numba" in sys.modules else None
        print(json.dumps([threads, before, after, os.environ.get("OPENBLAS_NUM_THREADS"), numba]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, env=clean_env(**user_setting))
    threads, before, after, env_setting, numba_threads = json.loads(out.stdout)
    if user_setting:
        assert threads is None and after == before and env_setting is None
        return
    expected = _expected_threads(2)
    assert threads == expected and after and set(after) == {expected}
    assert env_setting == str(expected)  # for BLAS libraries loaded later
    if HAVE_NUMBA:
        assert numba_threads == expected


# ----------------------------------------------------------- under mpiexec
_COLLECTIVES = """
    import os, sys
    import numpy as np
    from threadpoolctl import threadpool_info
    from fastbp.distributed import MPICommunicator, broadcast_net, check_same_net, world
    from fastbp.nets import MultiLayerNet

    comm = world(required=True)
    r, n = comm.rank, comm.size
    assert isinstance(comm, MPICommunicator) and n == int(sys.argv[1]), (type(comm), n)
    assert world() is comm  # made once: its set-up is a collective

    # allreduce_mean: the exact mean on every rank, in place, dtype kept
    for dtype in (np.float64, np.float32):
        base = np.arange(1001, dtype=dtype) * dtype(0.25)
        flat = base * dtype(r + 1) + dtype(r)
        assert comm.allreduce_mean(flat) is flat and flat.dtype == dtype
        expected = sum(base * dtype(k + 1) + dtype(k) for k in range(n)) / dtype(n)
        assert expected.dtype == dtype and np.array_equal(flat, expected), (dtype, flat[:4], expected[:4])
    assert comm.allreduce_mean_scalar(float(r)) == (n - 1) / 2

    # broadcast: root's arrays everywhere, in place
    for root in (0, n - 1):
        a, b = np.full(5, float(r)), np.full((2, 3), r, dtype=np.float32)
        comm.broadcast([a, b], root=root)
        assert (a == root).all() and (b == root).all() and b.dtype == np.float32

    # nets: equal ones pass and end up as rank 0's; a different one is refused on every rank
    net = MultiLayerNet(4, [6], 3, seed=r, use_batchnorm=True)
    net.buffers["running_mean1"][:] = r
    broadcast_net(comm, net)
    reference = MultiLayerNet(4, [6], 3, seed=0, use_batchnorm=True)
    assert all(np.array_equal(net.params[k], reference.params[k]) for k in reference.params)
    assert (net.buffers["running_mean1"] == 0).all()
    odd = n - 1
    for name, change in (("hidden", {"hidden_size_list": [7]}), ("dtype", {"dtype": "float32"})):
        options = {"hidden_size_list": [6], "dtype": "float64", **(change if r == odd else {})}
        other = MultiLayerNet(4, options["hidden_size_list"], 3, seed=0, dtype=options["dtype"])
        try:
            (check_same_net if name == "hidden" else broadcast_net)(comm, other)
        except ValueError as exc:
            print(f"rank {r} {name} refused: {exc}", flush=True)
        else:
            raise AssertionError(f"rank {r}: the {name} mismatch went unnoticed")

    # threads: each rank gets its share of the cores
    ranks_here = comm.local_size
    expected = max(1, min(len(os.sched_getaffinity(0)), os.cpu_count() // ranks_here))
    blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas and set(blas) == {expected}, (blas, expected)
    assert os.environ["NUMBA_NUM_THREADS"] == str(expected)
    comm.barrier()
    print(f"rank {r} of {n} ok", flush=True)
"""


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_collectives_across_ranks(tmp_path, n):
    script = write_script(tmp_path, "collectives.py", _COLLECTIVES)
    result = mpiexec(n, ["-m", "mpi4py", script, n])
    assert result.returncode == 0, result.stdout + result.stderr
    odd = n - 1
    for r in range(n):
        assert f"rank {r} of {n} ok" in result.stdout
        assert (f"rank {r} hidden refused: fastbp: the nets differ across ranks: rank {odd} differs "
                f"from rank 0 in hidden_size_list ([7] vs [6])") in result.stdout
        assert (f"rank {r} dtype refused: fastbp: the nets differ across ranks: rank {odd} differs "
                f"from rank 0 in dtype ('float32' vs 'float64')") in result.stdout
    assert "rank 0 differs" not in result.stdout


_FAULT = """
    import sys
    import numpy as np
    from fastbp.distributed import install_abort_on_exception, world

    comm = world(required=True)
    if sys.argv[1] == "excepthook":
        install_abort_on_exception(comm)
    grad = np.zeros(1000)
    for step in range(1, 6):
        if comm.rank == 1 and step == 3:
            raise RuntimeError(f"injected fault on step {step}")
        comm.allreduce_mean(grad)  # the other ranks wait here on step 3
    print(f"rank {comm.rank} finished", flush=True)
"""


@needs_mpi
@pytest.mark.parametrize("mode, n", [("excepthook", 2), ("mpi4py-run", 3)])
def test_a_failing_rank_ends_the_whole_job_quickly_and_is_named(tmp_path, mode, n):
    script = write_script(tmp_path, "fault.py", _FAULT)
    args = [script, mode] if mode == "excepthook" else ["-m", "mpi4py", script, mode]
    start = time.perf_counter()
    result = mpiexec(n, args, timeout=30)
    elapsed = time.perf_counter() - start
    assert result.returncode != 0 and elapsed < 10, (result.returncode, elapsed)
    assert "finished" not in result.stdout
    assert "RuntimeError: injected fault on step 3" in result.stderr
    if mode == "excepthook":  # fastbp's hook names the rank before it aborts
        assert "fastbp: rank 1 failed: RuntimeError: injected fault on step 3" in result.stderr
    # under ``python -m mpi4py`` only MPICH's own abort line names the rank, and that line
    # races with the job's teardown: about one run in five (2 cores, loaded) loses it


def test_data_parallel_on_a_gpu_backend_is_refused_clearly(monkeypatch):
    """NCCL is not implemented: a GPU net is refused before any collective, never crashed on."""
    from fastbp.distributed import DataParallel

    class TwoRanks(SingleProcess):
        size = 2

        def allgather(self, obj):
            raise AssertionError("no collective may run")

    net = MultiLayerNet(4, [3], 2, seed=0)
    monkeypatch.setattr(net.backend, "gpu", True)
    with pytest.raises(NotImplementedError, match="needs NCCL.*never hands a GPU pointer to MPI"):
        DataParallel(TwoRanks(), net)

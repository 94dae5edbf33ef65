"""Running real ``mpiexec`` jobs from tests: found next to python, never hanging.

A job past its time limit is killed with its whole process group and fails
the test; tests that need MPI are skipped, with the reason, without it.
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_NEXT_TO_PYTHON = Path(sys.executable).with_name("mpiexec")
MPIEXEC = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.exists() else shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC),
    reason="needs mpi4py and mpiexec: pip install \"fastbp[mpi]\"" if not HAVE_MPI4PY
    else "needs mpiexec next to python or on PATH")

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def clean_env(**extra):
    """This environment without thread settings or an outer launcher's variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in THREAD_VARS and not k.startswith(("PMI_", "HYDRA_", "OMPI_", "MV2_"))}
    return {**env, **extra}


def mpiexec(n, args, timeout=60, wdirs=None):
    """Run ``mpiexec -n n python *args``; a job past ``timeout`` is killed and fails the test.

    ``wdirs``: one working directory per rank (an MPMD launch, one rank per part).
    """
    if wdirs is None:
        cmd = [MPIEXEC, "-n", str(n), sys.executable, *map(str, args)]
    else:
        parts = [["-n", "1", "-wdir", str(w), sys.executable, *map(str, args)] for w in wdirs]
        cmd = [MPIEXEC, *[word for part in parts for word in (*part, ":")][:-1]]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=clean_env(), start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank it started
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(cmd)} ran past {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def write_script(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path

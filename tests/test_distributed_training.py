"""Data-parallel training under mpiexec equals training in one process."""

import json

import numpy
import pytest
from mpi_jobs import HAVE_NUMBA, mpiexec, needs_mpi, write_script

from fastbp.nets import MultiLayerNet
from fastbp.optim import SGD, Adam, Momentum
from fastbp.train import Trainer

pytestmark = needs_mpi

#: name -> (optimizer, weight decay); each trains 20 steps of a global batch of 32
CONFIGS = {f"{name}-wd{lam}": (name, lam) for name in ("SGD", "Momentum", "Adam")
           for lam in (0.0, 0.01)}
MAKERS = {"SGD": lambda: SGD(lr=0.1), "Momentum": lambda: Momentum(lr=0.05),
          "Adam": lambda: Adam(lr=0.01)}
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not HAVE_NUMBA, reason="numba not installed (pip install 'fastbp[numba]')"))]

_TRAIN = """
import json, sys
import numpy as np
from fastbp.distributed import world
from fastbp.nets import MultiLayerNet
from fastbp.optim import SGD, Adam, Momentum
from fastbp.train import Trainer

backend, out, configs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
makers = {"SGD": lambda: SGD(lr=0.1), "Momentum": lambda: Momentum(lr=0.05),
          "Adam": lambda: Adam(lr=0.01)}
comm = world(required=True)
rng = np.random.default_rng(0)
x, t = rng.standard_normal((640, 8)), rng.integers(0, 4, 640)
results = {}
for name, (optimizer, lam, dropout, batchnorm) in configs.items():
    net = MultiLayerNet(8, [16, 12], 4, weight_decay_lambda=lam, use_dropout=dropout,
                        use_batchnorm=batchnorm, seed=3 + comm.rank, backend=backend)
    history = Trainer(net, makers[optimizer](), x, t, x[:100], t[:100], epochs=1, batch_size=32,
                      verbose=False, comm=comm).fit()
    arrays = {**net.params, **net.buffers}
    same = comm.allgather({k: np.asarray(v).tobytes() for k, v in arrays.items()})
    assert all(s == same[0] for s in same), f"{name}: the ranks' nets differ"
    results[name] = {"history": history, **{k: np.asarray(v).tolist() for k, v in arrays.items()}}
    if dropout:  # each rank's own masks, drawn by one more training pass
        net.loss(x[:32], t[:32], train_flg=True)
        masks = comm.allgather(net.layers["Dropout1"].mask.tobytes())
        results[name]["masks differ"] = len(set(masks)) == len(masks)
    del history["epoch_time"]
if comm.rank == 0:
    with open(out, "w") as f:
        json.dump(results, f)
"""


def _distributed(tmp_path, ranks, backend, configs):
    path = write_script(tmp_path, "train.py", _TRAIN)
    out = tmp_path / "results.json"
    result = mpiexec(ranks, ["-m", "mpi4py", path, backend, out, json.dumps(configs)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())


def _alone(backend, optimizer, lam):
    rng = numpy.random.default_rng(0)
    x, t = rng.standard_normal((640, 8)), rng.integers(0, 4, 640)
    net = MultiLayerNet(8, [16, 12], 4, weight_decay_lambda=lam, seed=3, backend=backend)
    history = Trainer(net, MAKERS[optimizer](), x, t, x[:100], t[:100], epochs=1, batch_size=32,
                      verbose=False).fit()
    return net, history


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ranks", [2, 3])  # 3 ranks split each batch of 32 as 11, 11, 10
def test_ranks_train_the_same_net_as_one_process(tmp_path, backend, ranks):
    configs = {name: (opt, lam, False, False) for name, (opt, lam) in CONFIGS.items()}
    results = _distributed(tmp_path, ranks, backend, configs)
    for name, (optimizer, lam) in CONFIGS.items():
        net, history = _alone(backend, optimizer, lam)
        for key, value in net.params.items():
            got = numpy.array(results[name][key])
            error = numpy.linalg.norm(got - value) / numpy.linalg.norm(value)
            assert error <= 1e-10, f"{name} {key}: relative error {error:.1e}"
        ours = results[name]["history"]
        assert ours["loss"][0] == pytest.approx(history["loss"][0], rel=1e-10)  # a mean of ranks
        assert ours["train_acc"] == history["train_acc"] and ours["test_acc"] == history["test_acc"]


def test_dropout_and_batchnorm_runs_repeat_exactly_and_keep_the_ranks_equal(tmp_path):
    """Each rank draws its own dropout masks (seeded by the layer's seed and the rank)."""
    configs = {"first": ("Adam", 0.0, True, True), "again": ("Adam", 0.0, True, True)}
    results = _distributed(tmp_path, 2, "numpy", configs)  # the script checks ranks agree
    assert results["first"] == results["again"]
    assert results["first"]["masks differ"] is True
    assert results["first"]["running_var1"] != [1.0] * 16  # averaged running statistics


_MISMATCH = """
import sys
import numpy as np
from fastbp.distributed import world
from fastbp.nets import MultiLayerNet
from fastbp.optim import SGD
from fastbp.train import Trainer

comm = world(required=True)
net = MultiLayerNet(8, [16 if comm.rank == 0 else 15], 4, seed=0)
x, t = np.zeros((64, 8)), np.zeros(64, dtype=int)
try:
    Trainer(net, SGD(), x, t, comm=comm)
except ValueError as exc:
    print(f"rank {comm.rank}: {exc}", file=sys.stderr)
    sys.exit(3)
"""


def test_ranks_with_different_nets_are_refused_before_any_step(tmp_path):
    result = mpiexec(2, [write_script(tmp_path, "mismatch.py", _MISMATCH)])
    assert result.returncode != 0
    assert result.stderr.count("the nets differ across ranks: rank 1 differs from rank 0") == 2
    assert "hidden_size_list" in result.stderr


_FAULT = """
import numpy as np
from fastbp.distributed import world
from fastbp.nets import MultiLayerNet
from fastbp.optim import SGD
from fastbp.train import Trainer

comm = world(required=True)
net = MultiLayerNet(8, [16], 4, seed=0)
steps = [0]
real = net.train_step

def train_step(*args, **kwargs):
    steps[0] += 1
    if comm.rank == 1 and steps[0] == 3:
        raise RuntimeError("rank 1 broke on its third step")
    return real(*args, **kwargs)

net.train_step = train_step
x, t = np.zeros((640, 8)), np.zeros(640, dtype=int)
Trainer(net, SGD(), x, t, epochs=100, batch_size=32, verbose=False, comm=comm).fit()
"""


def test_a_rank_that_raises_in_training_ends_the_job_and_is_named(tmp_path):
    import time

    start = time.perf_counter()
    result = mpiexec(2, ["-m", "mpi4py", write_script(tmp_path, "fault.py", _FAULT)], timeout=30)
    assert time.perf_counter() - start < 10
    assert result.returncode != 0
    assert "rank 1 broke on its third step" in result.stderr


def test_fastbp_train_distributed_reports_and_saves_once(tmp_path):
    save = tmp_path / "net.npz"
    result = mpiexec(2, ["-m", "mpi4py", "-m", "fastbp", "train", "--distributed", "--epochs", "2",
                         "--hidden", "32", "--quiet", "--save", save], timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train acc "), result.stdout
    assert save.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]


_NONFINITE_ON_ONE_RANK = """
import sys
import numpy as np
from fastbp.distributed import world
from fastbp.nets import MultiLayerNet
from fastbp.optim import Adam
from fastbp.train import Trainer

comm = world(required=True)
rng = np.random.default_rng(0)
x, t = rng.standard_normal((64, 8)), rng.integers(0, 4, 64)
net = MultiLayerNet(8, [16], 4, seed=0, use_batchnorm=True, backend=sys.argv[1])
opt = Adam(lr=0.01)
Trainer(net, opt, x, t, epochs=1, batch_size=64, verbose=False, comm=comm).fit()
before = (net.params.flat.copy(), net.buffers.flat.copy(), dict(opt.step),
          {k: v.copy() for k, v in opt.m.items()})
bad = x.copy()
bad[np.random.default_rng(0).permutation(64)[32:]] = 1e307  # only rank 1's share overflows
try:
    Trainer(net, opt, bad, t, epochs=1, batch_size=64, verbose=False, comm=comm).fit()
except FloatingPointError as exc:
    print(f"rank {comm.rank} stopped: {exc}", flush=True)
assert np.array_equal(net.params.flat, before[0]) and np.array_equal(net.buffers.flat, before[1])
assert dict(opt.step) == before[2] and all(np.array_equal(opt.m[k], v) for k, v in before[3].items())
comm.barrier()  # every rank is still in step
print(f"rank {comm.rank} untouched", flush=True)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_loss_on_one_rank_stops_every_rank_before_its_update(tmp_path, backend):
    """A FloatingPointError is meant to be caught; the other ranks must not wait forever."""
    script = write_script(tmp_path, "nonfinite.py", _NONFINITE_ON_ONE_RANK)
    result = mpiexec(2, ["-m", "mpi4py", script, backend], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    for r in range(2):
        assert f"rank {r} stopped: Trainer: the loss of epoch 1, batch 1 of 1" in result.stdout
        assert f"rank {r} untouched" in result.stdout


_STATISTICS_OVERFLOW_ON_ONE_RANK = """
import numpy as np
from fastbp.distributed import world
from fastbp.nets import MultiLayerNet
from fastbp.optim import SGD
from fastbp.train import Trainer

comm = world(required=True)
rng = np.random.default_rng(0)
x, t = rng.standard_normal((64, 3)), rng.integers(0, 2, 64)
bad = x * (1e200 if comm.rank == 1 else 1)  # rank 1's own file: finite, but of inf variance
net = MultiLayerNet(3, [4], 2, use_batchnorm=True, seed=0)
with np.errstate(all="ignore"):
    try:
        Trainer(net, SGD(lr=0.01), bad, t, epochs=1, batch_size=16, verbose=False, comm=comm).fit()
    except FloatingPointError as exc:
        print(f"rank {comm.rank} stopped: {exc}", flush=True)
comm.barrier()
print(f"rank {comm.rank} in step", flush=True)
"""


def test_batchnorm_statistics_that_overflow_on_one_rank_stop_every_rank(tmp_path):
    """Checked after the running statistics are averaged, so no rank waits for the others."""
    script = write_script(tmp_path, "statistics.py", _STATISTICS_OVERFLOW_ON_ONE_RANK)
    result = mpiexec(2, ["-m", "mpi4py", script], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    for r in range(2):
        assert f"rank {r} stopped: Trainer: after epoch 1 buffers['running_var1']" in result.stdout
        assert f"rank {r} in step" in result.stdout


@pytest.mark.parametrize("missing_on", [0, 1])
def test_fastbp_train_distributed_never_leaves_ranks_waiting_after_an_error_on_one(tmp_path,
                                                                                  missing_on):
    """Without ``python -m mpi4py``: an error that main turns into exit status 2 on one rank
    must end every rank, and rank 0 names it; only rank 0 writes, so only its --save
    directory has to exist."""
    wdirs = [tmp_path / "rank0", tmp_path / "rank1"]
    for r, wdir in enumerate(wdirs):
        (wdir / "out").mkdir(parents=True) if r != missing_on else wdir.mkdir()
    args = ["-m", "fastbp", "train", "--distributed", "--epochs", "1", "--hidden", "16", "--quiet",
            "--save", "out/net.npz"]
    result = mpiexec(2, args, timeout=60, wdirs=wdirs)
    if missing_on == 0:
        assert result.returncode != 0, result.stdout + result.stderr
        assert result.returncode == 2, result.stdout + result.stderr
        assert "fastbp train: error: rank 0: --save out/net.npz: directory" in result.stderr, (
            result.stdout + result.stderr)
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert (wdirs[0] / "out" / "net.npz").exists()


_RUN_MISMATCH = """
import sys
import numpy as np
from fastbp.distributed import world
from fastbp.nets import MultiLayerNet
from fastbp.optim import SGD
from fastbp.train import Trainer

comm = world(required=True)
what = sys.argv[1]
n = 640 - (32 if what == "samples" and comm.rank == 1 else 0)  # each rank loaded its own file
x, t = np.random.default_rng(0).standard_normal((n, 8)), np.zeros(n, dtype=int)
seed = {"seed": comm.rank, "unseeded": None}.get(what, 0)
net = MultiLayerNet(8, [16], 4, seed=0)
try:
    trainer = Trainer(net, SGD(), x, t, epochs=1, batch_size=32, seed=seed, verbose=False, comm=comm)
except ValueError as exc:
    print(f"rank {comm.rank}: {exc}", flush=True)
    sys.exit(0)
seeds = comm.allgather(trainer.seed)
assert what == "unseeded" and seeds[0] is not None and len(set(seeds)) == 1, seeds
trainer.fit()
print(f"rank {comm.rank}: trained with rank 0's permutations", flush=True)
"""


@pytest.mark.parametrize("what, expected", [
    ("samples", "rank 1 differs from rank 0 in x_train ((608, 8) vs (640, 8)), t_train"),
    ("seed", "rank 1 differs from rank 0 in seed (1 vs 0)"),
    ("unseeded", "trained with rank 0's permutations")])
def test_ranks_must_cut_the_same_global_batches(tmp_path, what, expected):
    """Other sizes would mismatch the collectives; another seed silently trains on other samples."""
    script = write_script(tmp_path, "run_mismatch.py", _RUN_MISMATCH)
    result = mpiexec(2, ["-m", "mpi4py", script, what], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for r in range(2):
        assert f"rank {r}: " in result.stdout and result.stdout.count(expected) == 2, result.stdout

"""The train step of the configurations people train with, and the Trainer's epoch.

Per configuration and dtype, interleaved in one run: ``net.train_step`` on
each CPU backend of fastbp, the textbook NumPy code, PyTorch CPU eager with
the same net, optimizer, hyper-parameters and batches, and the floor (the
step's matrix products alone through NumPy's BLAS).  The batches are cycled
from a seeded pool, so nothing overfits one batch and no step finds the
batch of the step before in cache.  The ratios compare with fastbp's fastest
CPU backend in that run.

Then the Trainer's epoch on the digits set (``fastbp train``'s default net,
optimizer and batch size) against a PyTorch loop doing the same epoch (same
starting weights, the same seeded permutation per epoch), whole epochs
alternated between the contenders.
"""

from __future__ import annotations

import time

import numpy as np

import fastbp.optim as optim
from fastbp.backends import to_numpy
from fastbp.benchmarks import report
from fastbp.benchmarks.contenders import Config, Problem, Unavailable, import_torch, torch_net
from fastbp.benchmarks.timing import alternated
from fastbp.benchmarks.train_step import measure_group
from fastbp.data import load_dataset
from fastbp.sysinfo import usable_cpus
from fastbp.train import Trainer

SUITE = "configurations"
#: distinct seeded batches each contender cycles through
POOL = 8
DEFAULT_TRAIN = Config((64, 100, 100, 10), 32, "adam", 0.001, init="he", pool=POOL)
#: issue 14's configurations and its targets for fastbp's fastest CPU backend, in both
#: dtypes: (most step / floor, least textbook / fastbp, least torch / fastbp); None: no target
TARGETS = {
    DEFAULT_TRAIN: (1.5, 3.0, 6.0),
    Config((784, 100, 100, 10), 100, "adam", 0.001, init="he", pool=POOL): (1.6, 2.0, 1.5),
    Config((784, 100, 100, 10), 100, "momentum", 0.01, weight_decay=1e-4, init="he",
           pool=POOL): (1.5, 1.8, 1.4),
    Config((784, 100, 100, 10), 100, "adam", 0.001, batchnorm=True, init="he",
           pool=POOL): (1.8, 2.0, 1.5),
    Config((784, 1024, 1024, 10), 256, "adam", 0.001, init="he", pool=POOL): (1.3, 2.0, 1.15),
    Config((784, 1024, 10), 256, "sgd", 0.01, init="he", pool=POOL): (1.05, None, None),
}
#: the other optimizers, timed at the 784-100-100-10 net without targets
OTHER_OPTIMIZERS = [Config((784, 100, 100, 10), 100, name, lr, init="he", pool=POOL)
                    for name, lr in (("nesterov", 0.01), ("adagrad", 0.01), ("rmsprop", 0.001))]
#: dropout, timed at the 784-100-100-10 net without targets (each contender draws its own masks)
DROPOUT = [Config((784, 100, 100, 10), 100, "adam", 0.001, init="he", pool=POOL, dropout=0.5)]
CONFIGS = {"full": [*TARGETS, *OTHER_OPTIMIZERS, *DROPOUT]}
CONFIGS["quick"] = [c for c in CONFIGS["full"] if c.sizes != (784, 1024, 1024, 10)]
CONTENDERS = ("textbook", "fastbp-numpy", "fastbp-numba", "torch", "floor")
CPU_BACKENDS = ("numpy", "numba")
EPOCH_DATASET = "digits"


def contender_names(backends) -> list:
    """The contenders of a configuration, in table order, with fastbp's chosen CPU backends."""
    return [n for n in CONTENDERS if not n.startswith("fastbp-") or n[len("fastbp-"):] in backends]


def missed_targets(config: Config, speedup: dict) -> list | None:
    """The targets of ``config`` its group missed (``speedup`` as the group records it).

    None when the configuration has no targets; a target whose contender was
    not measured counts as neither met nor missed (see :func:`unmeasured_targets`).
    """
    targets = TARGETS.get(config)
    if targets is None:
        return None
    floor_max, textbook_min, torch_min = targets
    missed = []
    if "floor" in speedup and 1 / speedup["floor"] > floor_max:
        missed.append(f"/ floor <= {floor_max:g}")
    for name, least in (("textbook", textbook_min), ("torch", torch_min)):
        if least is not None and name in speedup and speedup[name] < least:
            missed.append(f"vs {name} >= {least:g}")
    return missed


def unmeasured_targets(config: Config, speedup: dict) -> list:
    """The contenders of ``config``'s targets that its group did not measure."""
    targets = TARGETS.get(config)
    if targets is None:
        return []
    return [name for name, target in zip(("floor", "textbook", "torch"), targets)
            if target is not None and name not in speedup]


# ------------------------------------------------------------------ epochs
def trainer_epochs(backend, problem: Problem, x, t):
    """``(epoch, params)``: ``epoch(i)`` runs one ``Trainer`` epoch with seed ``i``, returns its epoch_time.

    The net and optimizer carry over from epoch to epoch; each epoch is a new
    ``Trainer(..., epochs=1, seed=i)``, so epoch ``i`` visits the samples in
    the order of ``default_rng(i).permutation``.
    """
    net, opt = problem.net(backend), problem.config.optimizer_from(optim)

    def epoch(i):
        trainer = Trainer(net, opt, x, t, epochs=1, batch_size=problem.config.batch, seed=i,
                          verbose=False)
        return trainer.fit()["epoch_time"][-1]

    return epoch, lambda: {k: to_numpy(v) for k, v in net.params.items()}


def torch_epochs(problem: Problem, x, t):
    """``(epoch, params)`` for PyTorch: the loop ``Trainer.fit`` runs, written for ``torch.nn``.

    Epoch ``i`` visits the samples in the order of ``default_rng(i).permutation``,
    sums the batch losses on the tensor side and reads the sum once at the end;
    its time covers the same span as the Trainer's ``epoch_time``.  Then, as
    ``Trainer.fit`` does after each epoch, it measures the training accuracy
    (outside that time, inside the call, which pytest-benchmark times whole).
    """
    torch = import_torch("cpu")
    torch.set_num_threads(usable_cpus())  # as many threads as BLAS and numba
    model, opt, params = torch_net(torch, problem, "cpu")
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(np.ascontiguousarray(x, problem.dtype))
    t = torch.from_numpy(np.asarray(t, np.int64))
    n, size = len(x), problem.config.batch

    def epoch(i):
        order = torch.from_numpy(np.random.default_rng(i).permutation(n))
        start = time.perf_counter()
        total = 0.0
        for j in range(0, n, size):
            batch = order[j:j + size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[batch]), t[batch])
            loss.backward()
            opt.step()
            total = total + loss.detach() * len(batch)
        float(total)  # the epoch's one synchronisation, as in Trainer.fit
        seconds = time.perf_counter() - start
        with torch.no_grad():  # the Trainer's evaluation of the epoch
            float((model(x).argmax(dim=1) == t).to(x.dtype).mean())
        return seconds

    return epoch, params


def measure_epochs(dtype: str, backends, data, settings) -> dict:
    """Seconds per Trainer epoch on ``data`` per CPU backend and for PyTorch, epochs alternated."""
    (x, t), problem = data, Problem(DEFAULT_TRAIN, dtype)
    runs, skipped = {}, {}
    for name in backends:
        runs[f"fastbp-{name}"] = trainer_epochs(name, problem, x, t)[0]
    try:
        runs["torch"] = torch_epochs(problem, x, t)[0]
    except Unavailable as exc:
        skipped["torch"] = str(exc)
    timings = alternated(runs, settings.rounds)
    medians = {name: timing.median for name, timing in timings.items()}
    fastest = min((n for n in medians if n.startswith("fastbp-")), key=medians.get)
    return {"dtype": dtype, "samples": len(x), "fastest": fastest,
            "timings": {name: timing.as_dict() for name, timing in timings.items()},
            "speedup": {name: medians[name] / medians[fastest] for name in medians},
            "skipped": skipped}


def load_epoch_data():
    """The training half of the epoch's data set, ``(x, t)``; ImportError without scikit-learn."""
    (x, t), _ = load_dataset(EPOCH_DATASET)
    return x, t


# --------------------------------------------------------------------- run
def run(settings) -> dict:
    from fastbp.sysinfo import blas_info

    backends = [b for b in settings.backends if b in CPU_BACKENDS]
    names = contender_names(backends)
    mode = "quick" if settings.quick else "full"
    groups = []
    for config in CONFIGS[mode]:
        for dtype in settings.dtypes:
            group = measure_group(config, dtype, "cpu", names, settings, fastest=True)
            missed = missed_targets(config, group["speedup"]) if group["hero"] else None
            unmeasured = unmeasured_targets(config, group["speedup"]) if group["hero"] else []
            group.update(config=config._asdict(), missed=missed, unmeasured=unmeasured)
            groups.append(group)
            settings.progress(SUITE, f"{config.label} {dtype}: " + ", ".join(
                f"{n} {report.seconds(t['median_s'])}" for n, t in group["timings"].items()))

    epochs = {"dataset": EPOCH_DATASET, "config": DEFAULT_TRAIN._asdict(), "rows": []}
    try:
        if not backends:
            raise ImportError(f"no fastbp CPU backend among {settings.backends}")
        data = load_epoch_data()
    except ImportError as exc:
        epochs["skipped"] = str(exc)
    else:
        for dtype in settings.dtypes:
            epochs["rows"].append(measure_epochs(dtype, backends, data, settings))
            settings.progress(SUITE, f"{EPOCH_DATASET} epoch {dtype}: " + ", ".join(
                f"{n} {report.seconds(t['median_s'])}"
                for n, t in epochs["rows"][-1]["timings"].items()))
    return {"groups": groups, "epochs": epochs, "blas": blas_info()}


# ------------------------------------------------------------------- table
def table(result: dict) -> str:
    out = []
    groups = result["groups"]
    if groups:
        pools = "/".join(map(str, sorted({g["config"]["pool"] for g in groups})))
        out.append(report.time_table(
            f"Train step per configuration, CPU: median time per step, interleaved rounds, "
            f"batches cycled from a pool of {pools}", "configuration", groups))
        out.append(_ratio_table(groups))
    out.append(_epoch_table(result["epochs"]))
    out.append("\n".join(report.blas_lines(result["blas"])) + "\n")
    return "\n".join(out)


def _ratio_table(groups) -> str:
    rows = []
    for g in groups:
        s, missed = g["speedup"], g.get("missed")
        if missed is not None:  # a target whose contender did not run is no target met
            missed = missed + [f"{'/' if name == 'floor' else 'vs'} {name} not measured"
                               for name in g.get("unmeasured", ())]
        rows.append((g["shape"], g["dtype"], g["hero"] or "-",
                     report.ratio(1 / s["floor"]) if "floor" in s else "-",
                     report.ratio(s.get("textbook")), report.ratio(s.get("torch")),
                     "-" if missed is None else ", ".join(missed) or "all met"))
    return report.table(
        "fastbp's fastest CPU backend per configuration: its step over the floor (the step's "
        "matrix products alone), and the others' time over its (above 1: fastbp is faster)",
        ("configuration", "dtype", "fastest", "/ floor", "vs textbook", "vs torch",
         "targets missed"), rows)


def _epoch_table(epochs: dict) -> str:
    c = Config(**epochs["config"])
    title = (f"Trainer epoch on {epochs['dataset']} ({c.label}, lr {c.lr:g}): median seconds per "
             "epoch of training (Trainer's epoch_time), whole epochs alternated")
    if "skipped" in epochs:
        return f"{title}\nskipped: {epochs['skipped']}\n"
    rows = epochs["rows"]
    names = report.contender_names(rows)
    body = [(r["dtype"], *(report.seconds(r["timings"][n]["median_s"]) if n in r["timings"]
                           else "-" for n in names), r["fastest"],
             *(report.ratio(r["speedup"].get(n)) for n in names)) for r in rows]
    notes = [f"{rows[0]['samples']:,} samples per epoch" if rows else "",
             "vs X: X's epoch over the fastest fastbp backend's", *report.skipped_lines(rows)]
    return report.table(title, ("dtype", *names, "fastest", *(f"vs {n}" for n in names)),
                        body, [n for n in notes if n])

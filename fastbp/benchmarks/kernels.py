"""Kernel micro-benchmarks: each backend's hot paths against the plain NumPy expression.

The plain expression is the textbook layer code of
:mod:`fastbp.benchmarks.textbook` (boolean-mask ReLU, separate softmax and
cross-entropy, ``p -= lr * g``).  Optimizer updates beyond SGD are found on
the backends by name (``*_update``) and compared with the NumPy backend's,
since the textbook has no single expression for them.
"""

from __future__ import annotations

import inspect

import numpy as np

from fastbp.backends import get_backend
from fastbp.benchmarks import report, textbook
from fastbp.benchmarks.contenders import Shape
from fastbp.benchmarks.timing import Contender, interleaved

SIZES = {"full": [Shape(784, 50, 10, 100), Shape(784, 1024, 10, 256)],
         "quick": [Shape(784, 1024, 10, 256)]}
HOT_PATHS = ("affine_forward", "affine_backward", "relu_forward", "relu_backward",
             "softmax_cross_entropy", "softmax_cross_entropy_backward", "sgd_update")
#: values for the scalar arguments an optimizer update may take
UPDATE_SCALARS = {"lr": 1e-6, "momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                  "decay_rate": 0.99, "rho": 0.99, "t": 1, "step": 1, "iteration": 1}
LR = UPDATE_SCALARS["lr"]  # small: repeated in-place updates leave the weights' scale alone
PLAIN = "numpy-expr"


def make_data(size: Shape, dtype) -> dict:
    """Host arrays for one layer of ``size``: input, weights, activations, logits, labels."""
    rng = np.random.default_rng(0)
    B, n_in, H, C = size.batch, size.n_in, size.hidden, size.n_out
    shapes = {"x": (B, n_in), "W": (n_in, H), "b": (H,), "z": (B, H), "dout": (B, H),
              "grad": (n_in, H), "logits": (B, C)}
    data = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    data["t"] = rng.integers(0, C, B)
    return data


def plain_calls(data: dict) -> dict:
    """``{kernel: callable}``: the textbook NumPy code for each hot path, on its own copies."""
    d = {k: v.copy() for k, v in data.items()}
    affine = textbook.Affine(d["W"], d["b"])
    affine.forward(d["x"])
    relu = textbook.Relu()
    relu.forward(d["z"])
    loss = textbook.SoftmaxWithLoss()
    loss.forward(d["logits"], d["t"])
    params = {"W": d["W"]}

    def sgd():
        params["W"] -= LR * d["grad"]

    return {"affine_forward": lambda: affine.forward(d["x"]),
            "affine_backward": lambda: affine.backward(d["dout"]),
            "relu_forward": lambda: relu.forward(d["z"]),
            "relu_backward": lambda: relu.backward(d["dout"]),
            "softmax_cross_entropy": lambda: loss.forward(d["logits"], d["t"]),
            "softmax_cross_entropy_backward": loss.backward,
            "sgd_update": sgd}


def extra_updates(backend) -> list:
    """Names of the optimizer updates ``backend`` has besides ``sgd_update``."""
    return sorted(name for name in dir(backend) if name.endswith("_update")
                  and name != "sgd_update" and callable(getattr(backend, name)))


def update_call(backend, name: str, param):
    """``backend.<name>`` with arguments built from its signature, as a callable.

    Scalars are filled in by name (``UPDATE_SCALARS``), parameters with
    defaults keep them, and every other argument is a positive array shaped
    like ``param`` (valid for any optimizer state, such as a running square).
    """
    method = getattr(backend, name)
    rng = np.random.default_rng(1)
    args, kwargs = [], {}
    for p in inspect.signature(method).parameters.values():
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in UPDATE_SCALARS:
            value = UPDATE_SCALARS[p.name]
        else:
            value = backend.asarray(np.abs(rng.standard_normal(param.shape)) + 0.1,
                                    dtype=param.dtype)
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return lambda: method(*args, **kwargs)


def backend_calls(backend, data: dict) -> dict:
    """``{kernel: callable}``: ``backend``'s hot paths on its own copies of the data."""
    a = {k: backend.asarray(v.copy()) for k, v in data.items()}
    mask = backend.relu_forward(a["z"])[1]
    probs = backend.softmax_cross_entropy(a["logits"], a["t"])[1]
    calls = {"affine_forward": lambda: backend.affine_forward(a["x"], a["W"], a["b"]),
             "affine_backward": lambda: backend.affine_backward(a["dout"], a["x"], a["W"]),
             "relu_forward": lambda: backend.relu_forward(a["z"]),
             "relu_backward": lambda: backend.relu_backward(a["dout"], mask),
             "softmax_cross_entropy": lambda: backend.softmax_cross_entropy(a["logits"], a["t"]),
             "softmax_cross_entropy_backward":
                 lambda: backend.softmax_cross_entropy_backward(probs, a["t"]),
             "sgd_update": lambda: backend.sgd_update(a["W"], a["grad"], LR)}
    for name in extra_updates(backend):
        calls[name] = update_call(backend, name, a["W"])
    return calls


def measure(kernel: str, size: Shape, dtype: str, plain: dict, calls: dict, backends,
            settings) -> dict:
    """Interleave the plain expression (where there is one) and each backend on ``kernel``."""
    contenders, skipped = [], {}
    if kernel in plain:
        contenders.append(Contender(PLAIN, plain[kernel]))
    for backend in backends:
        name = f"fastbp-{backend.name}"
        if kernel not in calls[backend.name]:
            continue
        fn = calls[backend.name][kernel]
        try:
            fn()  # a signature this suite cannot fill is reported, not fatal
        except (TypeError, ValueError) as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        contenders.append(Contender(name, fn, sync=backend.synchronize if backend.gpu else None))
    timings = interleaved(contenders, settings.rounds, settings.round_s / 2, pause_s=0.01)
    medians = {name: t.median for name, t in timings.items()}
    baseline = PLAIN if PLAIN in medians else "fastbp-numpy"
    return {"kernel": kernel, "size": size.label, "dtype": dtype, "baseline": baseline,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "speedup": {name: medians[baseline] / m for name, m in medians.items()
                        if baseline in medians},
            "skipped": skipped}


#: parameters of the subnormal measurement (one hidden layer of 784-128)
SUBNORMAL_PARAMS = 100_352


def adam_calls(backend, dtype, n=SUBNORMAL_PARAMS) -> dict:
    """Adam updates with ordinary gradients, and with gradients whose squares are subnormal.

    The second is a net's dead units, every step: a gradient of about
    ``sqrt(tiny) / 100`` squares to a subnormal in ``v``'s update, however
    the stored state is flushed, and on x86 each such operation takes a slow
    path unless the hardware treats subnormals as zero.
    """
    rng = np.random.default_rng(2)
    tiny = float(np.finfo(dtype).tiny)
    calls = {}
    for case, scale, v0 in (("ordinary", 1.0, 1.0), ("subnormal", tiny ** 0.5 / 100, tiny * 100)):
        param, grad = (backend.asarray(rng.standard_normal(n) * s, dtype=dtype) for s in (1, scale))
        m, v = backend.asarray(np.zeros(n), dtype=dtype), backend.asarray(np.full(n, v0), dtype=dtype)
        calls[case] = (lambda p=param, g=grad, m=m, v=v:
                       backend.adam_update(p, g, m, v, LR, 0.9, 0.999, 1, 1e-8))
    return calls


def subnormal_rows(backends, settings) -> list:
    """For each backend and dtype: an Adam update with ordinary and with subnormal-squared gradients."""
    rows = []
    for dtype in settings.dtypes:
        contenders = []
        for backend in backends:
            for case, fn in adam_calls(backend, dtype).items():
                contenders.append(Contender(f"fastbp-{backend.name} {case}", fn,
                                            sync=backend.synchronize if backend.gpu else None))
        timings = interleaved(contenders, settings.rounds, settings.round_s / 2, pause_s=0.01)
        for backend in backends:
            ordinary, subnormal = (timings[f"fastbp-{backend.name} {case}"].median
                                   for case in ("ordinary", "subnormal"))
            rows.append({"backend": backend.name, "dtype": dtype, "params": SUBNORMAL_PARAMS,
                         "ordinary_s": ordinary, "subnormal_s": subnormal,
                         "slowdown": subnormal / ordinary})
            settings.progress("kernels", f"adam_update {backend.name} {dtype}: ordinary "
                              f"{report.seconds(ordinary)}, subnormal {report.seconds(subnormal)}")
    return rows


def run(settings) -> dict:
    mode = "quick" if settings.quick else "full"
    backends = [get_backend(name) for name in settings.backends]
    kernels = [*HOT_PATHS, *sorted({n for b in backends for n in extra_updates(b)})]
    rows = []
    for size in SIZES[mode]:
        for dtype in settings.dtypes:
            data = make_data(size, dtype)
            plain = plain_calls(data)
            calls = {b.name: backend_calls(b, data) for b in backends}
            for kernel in kernels:
                row = measure(kernel, size, dtype, plain, calls, backends, settings)
                rows.append(row)
                settings.progress("kernels", f"{kernel} {size.label} {dtype}: " + ", ".join(
                    f"{n} {report.seconds(t['median_s'])}" for n, t in row["timings"].items()))
    return {"rows": rows, "subnormal": subnormal_rows(backends, settings)}


def table(result: dict) -> str:
    names = list(dict.fromkeys(n for r in result["rows"] for n in r["timings"]))
    fast = [n for n in names if n.startswith("fastbp-")]
    rows = [(r["kernel"], r["size"], r["dtype"],
             *(report.seconds(r["timings"][n]["median_s"]) if n in r["timings"] else "-"
               for n in names),
             *(report.ratio(r["speedup"].get(n)) for n in fast)) for r in result["rows"]]
    out = report.table(
        "Kernels: median time per call, interleaved; speed-up over the plain NumPy (textbook) "
        "expression, or over fastbp-numpy for updates the textbook lacks",
        ("kernel", "size", "dtype", *names, *(f"{n.removeprefix('fastbp-')} speed-up"
                                             for n in fast)), rows,
        report.skipped_lines(result["rows"]))
    slow = [(r["backend"], r["dtype"], f"{r['params']:,}", report.seconds(r["ordinary_s"]),
             report.seconds(r["subnormal_s"]), report.ratio(r["slowdown"]))
            for r in result.get("subnormal", [])]
    return out + "\n" + report.table(
        "Adam update with gradients whose squares are subnormal (a dead unit's, every step), "
        "against ordinary gradients; interleaved",
        ("backend", "dtype", "parameters", "ordinary", "subnormal", "slowdown"), slow)

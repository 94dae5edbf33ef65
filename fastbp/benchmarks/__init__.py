"""Benchmark suites behind ``fastbp bench`` and ``pytest bench/``.

Each suite is a module with ``run(settings) -> dict`` (plain JSON-ready data)
and ``table(result) -> str``; timing, contenders and reporting live in their
own modules.  Importing this package is cheap: the suites import their peers
(torch, jax, matplotlib) only when they run.
"""

#: suite name on the command line -> module in this package
SUITES = {
    "gradients": "gradients",
    "train-step": "train_step",
    "configurations": "configurations",
    "kernels": "kernels",
    "startup": "startup",
    "distributed": "distributed",
}

"""Data sets: the seeded two-Gaussian toy set (more in ``load_dataset``)."""

from __future__ import annotations

import numpy


def make_toy(n=200, seed=0):
    """Two classes of ``n / 2`` points each from N((-1, 0.5), I) and N((1, -0.5), I).

    Returns ``(x, t)``: float64 points of shape ``(n, 2)`` and int64 labels.
    The Bayes limit of this set is about 0.87 accuracy.
    """
    rng = numpy.random.default_rng(seed)
    half = n // 2
    means = numpy.array([[-1.0, 0.5], [1.0, -0.5]])
    t = numpy.repeat(numpy.arange(2), [half, n - half])
    x = means[t] + rng.standard_normal((n, 2))
    return x, t

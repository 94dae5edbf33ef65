"""Interleaved timing: every contender is measured in the same stretch of time.

These machines drift by tens of percent within a minute (clock boost,
neighbours on shared cores).  Timing contender A for a minute and then B
compares two different machines; alternating short rounds A B C A B C ... and
taking each contender's median puts the drift into all of them alike, so the
ratios within one run hold even when the absolute times do not.

Between rounds the timer waits for the process to go idle (:func:`settle`):
thread pools keep spinning after their work ends (OpenBLAS's workers for
about 0.1 s), and a pool still spinning would take a core from the next
contender, which then measures the previous one's leftovers.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Contender:
    """A named zero-argument callable to time.

    ``sync`` waits for queued device work (GPU contenders): it runs before the
    clock starts and before it is read, so every call's device work lies
    inside the timed window.  ``before`` is an untimed call made before every
    timed call (to set up a condition, such as another library's busy thread
    pool); a contender with ``before`` is timed call by call.  ``params``,
    where given, returns the contender's current parameters as NumPy arrays
    keyed like fastbp's: the tests compare contenders by it, nothing times it.
    """

    name: str
    fn: Callable[[], object]
    sync: Callable[[], object] | None = None
    before: Callable[[], object] | None = None
    params: Callable[[], dict] | None = None


@dataclass
class Timing:
    """Per-call seconds of one contender: one sample per round."""

    name: str
    calls_per_round: int
    samples: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median: the run's own noise."""
        if len(self.samples) < 4:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return (q3 - q1) / self.median

    def as_dict(self) -> dict:
        return {"median_s": self.median, "spread": self.spread,
                "calls_per_round": self.calls_per_round, "samples_s": self.samples}


def run_round(contender: Contender, calls: int) -> float:
    """Seconds spent in ``calls`` timed calls of ``contender``."""
    fn, sync, before = contender.fn, contender.sync, contender.before
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if before is None:
            if sync:
                sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            if sync:
                sync()
            return time.perf_counter() - start
        total = 0.0
        for _ in range(calls):
            before()
            total += time_once(fn, sync)
        return total
    finally:
        if gc_was_enabled:
            gc.enable()


def settle(min_s: float = 0.0, max_s: float = 0.5, probe_s: float = 0.005) -> float:
    """Sleep ``min_s``, then until the process's threads stop using CPU; returns seconds waited.

    Idle means that a sleep of ``probe_s`` costs the process under a tenth of
    that in CPU time, which no spinning thread allows.  Gives up after ``max_s``.
    """
    start = time.perf_counter()
    time.sleep(min_s)
    while time.perf_counter() - start < max_s:
        cpu = time.process_time()
        time.sleep(probe_s)
        if time.process_time() - cpu < probe_s / 10:
            break
    return time.perf_counter() - start


def calibrate(contender: Contender, round_s: float, warmup: int = 2) -> int:
    """Number of calls that makes one round of ``contender`` last about ``round_s``."""
    for _ in range(warmup):
        run_round(contender, 1)
    calls = 1
    while True:
        elapsed = run_round(contender, calls)
        if elapsed >= round_s / 4:
            return max(1, round(calls * round_s / elapsed))
        calls *= 2 if elapsed > round_s / 64 else 8


def interleaved(contenders, rounds: int, round_s: float = 0.03, pause_s: float = 0.015) -> dict:
    """Median per-call time of each contender over ``rounds`` interleaved rounds.

    Each contender is warmed up and calibrated first; then the rounds visit
    the contenders in order, A B C A B C ..., each after at least ``pause_s``
    and until the process is idle (:func:`settle`), and each starting with
    one untimed call, so the round sees the steady state of a training loop
    (threads awake, caches warm).  Returns ``{name: Timing}`` in the
    contenders' order.
    """
    contenders = list(contenders)
    timings = {}
    for c in contenders:
        if c.name in timings:
            raise ValueError(f"interleaved: two contenders are named {c.name!r}")
        settle(pause_s)
        timings[c.name] = Timing(c.name, calibrate(c, round_s))
    for _ in range(rounds):
        for c in contenders:
            settle(pause_s)
            run_round(c, 1)  # untimed: wakes the threads that settling let sleep
            timing = timings[c.name]
            timing.samples.append(run_round(c, timing.calls_per_round) / timing.calls_per_round)
    return timings


def alternated(runs: dict, rounds: int, warmup: int = 1, pause_s: float = 0.015) -> dict:
    """Median of self-timed calls, alternated call by call: A B C A B C ...

    For work long enough to time alone that reports its own time (a
    training epoch, which leaves evaluation out): ``runs`` maps a name to
    ``fn(i) -> seconds``, where the ``i``-th call of every contender does the
    same work (``i`` counts from 0, the ``warmup`` untimed calls included).
    Returns ``{name: Timing}`` with one sample per round, in ``runs``' order.
    """
    for i in range(warmup):
        for fn in runs.values():
            fn(i)
    timings = {name: Timing(name, 1) for name in runs}
    for r in range(rounds):
        for name, fn in runs.items():
            settle(pause_s)
            timings[name].samples.append(fn(warmup + r))
    return timings


class OtherLoad:
    """The share of the machine's CPU time that other processes took since creation.

    Interleaving shields ratios from slow drift, not from a neighbour taking
    a core away for minutes; this says whether that happened.  Busy time of
    all CPUs comes from ``/proc/stat`` (Linux; ``share`` is None elsewhere),
    this process's own from ``getrusage`` (itself and its finished children).
    """

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = sum(getattr(resource.getrusage(who), part)
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for part in ("ru_utime", "ru_stime"))
        return busy, own, time.perf_counter()

    def share(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self._start, end))
        # /proc/stat counts in clock ticks (10 ms): clamp what rounding leaves outside [0, 1]
        return min(1.0, max(0.0, (busy - own) / (wall * (os.cpu_count() or 1))))


def time_once(fn: Callable[[], object], sync: Callable[[], object] | None = None) -> float:
    """Seconds taken by one call: for operations long enough to time alone."""
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - start

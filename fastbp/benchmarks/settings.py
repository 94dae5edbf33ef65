"""What a benchmark run covers, and how it reports progress."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class Settings:
    """``quick`` trades repeats and shapes for a run of about a minute."""

    backends: list
    dtypes: list = field(default_factory=lambda: ["float64", "float32"])
    quick: bool = False
    #: seconds one timed round lasts; rounds per measurement
    round_s: float = 0.03
    rounds: int = 15

    def __post_init__(self):
        if self.quick:
            self.round_s, self.rounds = 0.015, 5

    def progress(self, suite: str, message: str):
        """One line per measurement on stderr, so stdout keeps only the tables."""
        print(f"[{suite}] {message}", file=sys.stderr, flush=True)

"""Fresh interpreters, for measurements that a warm process would spoil (start-up, memory)."""

from __future__ import annotations

import json
import subprocess
import sys


class ChildFailed(RuntimeError):
    """A measurement's child process failed; the message is its last line of stderr."""


def run_python(code: str, *args, env=None, timeout=300) -> dict:
    """Run ``python -c code args...`` and return the JSON object it prints last."""
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=False,
                            capture_output=True, text=True, env=env, timeout=timeout)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        errors = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise ChildFailed(errors[-1])
    return json.loads(lines[-1])

"""``fl`` run as a user runs it (``python -m federated.cli.main``), in a process group of its own, and the
one JSON object its ``--json`` mode prints as the last line of stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .processes import run_in_group

__all__ = ["FL", "FL_TIMEOUT_S", "fl_json", "last_json", "run_fl", "simulate_json"]

#: The ``fl`` command of this interpreter.
FL = (sys.executable, "-m", "federated.cli.main")
#: How long one ``fl`` run may take by default (below the global pytest timeout of 300 s).
FL_TIMEOUT_S = 240.0


def run_fl(*args: str, timeout: float = FL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``fl ARGS``, to the end; on timeout the process and the broker and workers it started are killed
    and the test fails."""
    return run_in_group([*FL, *args], timeout=timeout)


def last_json(output: str) -> dict[str, Any]:
    """The JSON object on the last line of ``output`` (``--json`` mode's contract)."""
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def fl_json(*args: str, timeout: float = FL_TIMEOUT_S, stderr_tail: int = 3000) -> dict[str, Any]:
    """``fl ARGS`` (which must include ``--json``), which must exit 0 (else the test fails with the end of
    its stderr); its JSON result."""
    proc = run_fl(*args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-stderr_tail:]
    return last_json(proc.stdout)


def simulate_json(*flags: str, timeout: float = FL_TIMEOUT_S, stderr_tail: int = 3000) -> dict[str, Any]:
    """``fl simulate --json FLAGS``: its JSON result (the run must exit 0)."""
    return fl_json("simulate", "--json", *flags, timeout=timeout, stderr_tail=stderr_tail)

"""Small runs of the robustness benchmarks (``benchmarks/fuzz.py``, ``benchmarks/soak.py``): the suite's
guard that they still run, and that what they measure still holds at a smaller size."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from support import run_in_group

pytestmark = [pytest.mark.network, pytest.mark.slow]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *flags: str, timeout: float) -> dict[str, Any]:
    # A session of its own, so that a timeout kills the benchmark's broker and workers with it (killed
    # alone, it would leave workers that keep reconnecting to a broker that is gone).
    proc = run_in_group([sys.executable, str(BENCHMARKS / script), *flags], timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-3000:]  # one JSON line, nothing else
    result: dict[str, Any] = json.loads(lines[0])
    return result


def test_fuzz_benchmark_small() -> None:
    result = _run("fuzz.py", "--count", "2000", "--timeout", "120", timeout=240)
    # Every assertion shows the whole result: a failure under load must say which figure moved.
    shown = json.dumps(result)
    assert result["messages"] == 2000 and result["seconds"] > 0 and result["msgs_per_s"] > 0, shown
    assert result["broker_alive"] is True, shown
    assert result["honest_rounds_completed"] == result["honest_rounds_expected"] == 4, shown
    assert result["state_unchanged"] is True, result["checks"]
    assert result["checks"]["checkpoints_bit_identical"] and result["checks"]["survivors_exactly_honest"], shown
    # The broker refused the messages that should be refused, and only those (its log has one line per
    # refusal; a few may be lost with a connection libzmq closes for an oversize frame). Some ERROR
    # answers are lost to the flooding sockets' full queues and to those closed connections.
    assert abs(result["refusals_logged"] - result["errors_expected"]) <= 5, shown
    # (A hello socket the broker forgot gets a few refusals of its keep-alive heartbeats on top.)
    assert 0.8 * result["errors_expected"] <= result["errors_received"] <= result["errors_expected"] + 10, shown
    # Every kind of fuzz ran, the deep ones included.
    for category in ("random_frames", "hello_bad_id", "update_wrong_round", "replay_captured", "cur_float16",
                     "header_over_limit", "huge_declared", "secagg_in_plain_round"):
        assert result["categories"].get(category, 0) > 0, (category, shown)
    assert result["rounds_during_fuzz"] == 4, shown


def test_soak_benchmark_small() -> None:
    result = _run("soak.py", "--rounds", "30", "--local-epochs", "10", "--timeout", "200", timeout=280)
    assert result["hang"] is False
    assert result["completed"] == 30 and result["broker_exit_code"] == 0 and result["broker_tracebacks"] == 0
    assert result["rounds_recorded_contiguous"] is True
    assert result["completed"] + result["failed"] >= 30
    assert result["churn_events"] > 0
    assert result["rss_round20_mb"] > 0 and result["rss_end_mb"] > 0
    assert result["rss_within_10pct"] is True, result

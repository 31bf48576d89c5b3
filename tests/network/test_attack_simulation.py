"""``fl simulate`` with attackers: a real colluding attacker process, detection in the round records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_sign_flip_attackers_are_suspected_and_a_robust_rule_still_learns(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "federated.cli.main", "simulate", "--num-clients", "10",
                           "--num-rounds", "3", "--byzantine-fraction", "0.2", "--attack", "sign_flip",
                           "--aggregation", "median", "--json", "--store", str(tmp_path / "s.db")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    attackers = set(result["attackers"])
    assert len(attackers) == 2
    assert all(attackers <= set(r["suspects"]) for r in result["rounds"])
    assert result["final_accuracy"] > 0.8

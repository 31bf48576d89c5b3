"""``fl simulate`` with attackers: a real colluding attacker process, detection in the round records."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import simulate_json

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_sign_flip_attackers_are_suspected_and_a_robust_rule_still_learns(tmp_path: Path) -> None:
    result = simulate_json("--num-clients", "10", "--num-rounds", "3", "--byzantine-fraction", "0.2",
                           "--attack", "sign_flip", "--aggregation", "median", "--store", str(tmp_path / "s.db"))
    attackers = set(result["attackers"])
    assert len(attackers) == 2
    assert all(attackers <= set(r["suspects"]) for r in result["rounds"])
    assert result["final_accuracy"] > 0.8

"""The learning targets of the foundation, on digits with --seed 0, 10 clients and 20 rounds:

IID within 1.0 accuracy point of ``fl baseline``; Dirichlet(0.5) within 3 points; 30% dropout within
1 point of the same run without dropout; secure aggregation within 0.5 point of the same run without it.
Real processes, real MLX training; about 30 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import fl_json

pytestmark = [pytest.mark.slow, pytest.mark.network]


def _accuracy(*args: str) -> float:
    result = fl_json(*args, "--seed", "0", "--num-clients", "10", "--num-rounds", "20", "--json",
                     stderr_tail=2000)
    return float(result["final_accuracy"])


def test_federated_learning_matches_central_training(tmp_path: Path) -> None:
    baseline = _accuracy("baseline")
    iid = _accuracy("simulate", "--store", str(tmp_path / "iid.db"))
    skewed = _accuracy("simulate", "--partition", "dirichlet:0.5", "--store", str(tmp_path / "dir.db"))
    dropout = _accuracy("simulate", "--dropout", "0.3", "--store", str(tmp_path / "drop.db"))
    secure = _accuracy("simulate", "--secure", "--store", str(tmp_path / "secure.db"))
    print(f"baseline {baseline:.4f} iid {iid:.4f} dirichlet {skewed:.4f} dropout {dropout:.4f} secure {secure:.4f}")
    assert iid >= baseline - 0.010
    assert skewed >= baseline - 0.030
    assert abs(dropout - iid) <= 0.010
    assert abs(secure - iid) <= 0.005

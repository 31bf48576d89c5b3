"""`fl simulate` with differential privacy: real processes, real accountant, a hard budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support import last_json

from federated.broker.store import RoundStore
from federated.cli.main import fl
from federated.privacy import compute_epsilon

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _simulate(tmp_path: Path, *flags: str) -> tuple[int, dict, str]:
    store = tmp_path / "store.db"
    result = CliRunner().invoke(fl, ["simulate", "--num-clients", "4", "--local-epochs", "2", "--store", str(store),
                                     "--json", *flags])
    return result.exit_code, last_json(result.output), str(store)


def test_a_small_budget_stops_before_the_round_that_would_exceed_it(tmp_path: Path) -> None:
    budget = compute_epsilon(1.0, 3.0, 3, 1e-5) * 1.001  # three rounds fit, the fourth does not
    code, out, store = _simulate(tmp_path, "--num-rounds", "10", "--dp", "central", "--noise-multiplier", "3",
                                 "--privacy-budget", str(budget))
    assert code == 0, out
    assert out["reason"].startswith("privacy budget: round 4 would bring epsilon")
    assert [r["round"] for r in out["rounds"]] == [1, 2, 3]
    assert out["privacy"]["epsilon"] <= budget and out["privacy"]["noise_multiplier"] == 3.0
    with RoundStore(store, readonly=True) as s:
        last = s.list_rounds()[-1]
        assert last.epsilon is not None and last.epsilon <= budget
        assert s.get_meta("outcome")["privacy"]["epsilon"] == pytest.approx(last.epsilon)  # type: ignore[index]


def test_a_budget_without_a_noise_multiplier_is_calibrated_and_fits_the_planned_rounds(tmp_path: Path) -> None:
    code, out, _ = _simulate(tmp_path, "--num-rounds", "3", "--privacy-budget", "20")
    assert code == 0, out
    assert out["num_rounds"] == 3 and out["privacy"]["mode"] == "central" and out["privacy"]["calibrated"]
    sigma = out["privacy"]["noise_multiplier"]
    assert out["rounds"][-1]["epsilon"] == pytest.approx(compute_epsilon(1.0, sigma, 3, 1e-5), rel=1e-9)
    assert out["rounds"][-1]["epsilon"] <= 20.0


def test_record_level_dp_sgd_learns_and_reports_its_epsilon(tmp_path: Path) -> None:
    code, out, _ = _simulate(tmp_path, "--num-rounds", "4", "--dp", "record", "--noise-multiplier", "1.0",
                             "--dp-clip", "1.0")
    assert code == 0, out
    steps = 2 * 10  # local epochs * round(1 / 0.1)
    for n, rnd in enumerate(out["rounds"], start=1):
        assert rnd["epsilon"] == pytest.approx(compute_epsilon(0.1, 1.0, steps * n, 1e-5), rel=1e-9)
    assert out["final_accuracy"] > 0.5


def test_distributed_dp_under_secure_aggregation_completes_and_is_accounted(tmp_path: Path) -> None:
    code, out, _ = _simulate(tmp_path, "--num-rounds", "3", "--secure", "--dp", "distributed",
                             "--noise-multiplier", "1.0", "--min-clients", "3")
    assert code == 0, out
    assert [r["status"] for r in out["rounds"]] == ["complete"] * 3
    eps = [r["epsilon"] for r in out["rounds"]]
    assert eps[0] < eps[1] < eps[2] == out["privacy"]["epsilon"]
    assert out["privacy"]["accountant"] == "skellam-rdp"

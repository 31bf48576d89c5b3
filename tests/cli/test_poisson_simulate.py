"""`fl simulate --selection poisson` with central DP, end to end: real broker and worker processes, and
the epsilon it prints is the one dp-accounting computes for a Poisson-subsampled Gaussian at rate q."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from support import last_json

from federated.broker.store import RoundStore
from federated.cli.main import fl
from federated.cli.simulate import _print_summary
from federated.privacy import compute_epsilon

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_poisson_central_dp_prints_the_accountants_amplified_epsilon(tmp_path: Path) -> None:
    q, sigma = 0.5, 1.0
    store = tmp_path / "store.db"
    result = CliRunner().invoke(fl, ["simulate", "--num-clients", "8", "--num-rounds", "3", "--local-epochs", "1",
                                     "--selection", "poisson", "--client-sampling-rate", str(q), "--dp", "central",
                                     "--noise-multiplier", str(sigma), "--store", str(store), "--json"])
    out = last_json(result.output)
    assert result.exit_code == 0, result.output[-2000:]
    rounds = out["rounds"]
    # Every started round is released and charged under Poisson central DP: none fails, none is skipped.
    assert [r["status"] for r in rounds] == ["complete"] * 3
    assert all(0 <= r["participants"] <= 8 for r in rounds)
    privacy = out["privacy"]
    expected = compute_epsilon(q, sigma, 3, 1e-5)
    assert privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
    for n, rnd in enumerate(rounds, start=1):
        assert rnd["epsilon"] == pytest.approx(compute_epsilon(q, sigma, n, 1e-5), rel=1e-9)
    assert privacy["amplified"] is True and privacy["client_sampling_rate"] == q
    assert expected < compute_epsilon(1.0, sigma, 3, 1e-5)  # the amplification is real
    with RoundStore(store, readonly=True) as s:
        assert s.list_rounds()[-1].epsilon == pytest.approx(expected, rel=1e-9)
    # The human-readable summary prints the same figure and says whom it holds against.
    runner = CliRunner()
    printed = runner.invoke(_summary_command(out), []).output
    match = re.search(r"epsilon (\S+) at delta 1e-05", printed)
    assert match is not None, printed
    assert float(match.group(1)) == pytest.approx(expected, rel=1e-3)  # printed with 4 significant digits
    assert "amplified by Poisson client sampling at q=0.5" in printed
    assert "not against the trusted broker" in printed


def _summary_command(result: dict[str, Any]) -> click.Command:
    @click.command()
    def show() -> None:
        _print_summary(result)

    return show

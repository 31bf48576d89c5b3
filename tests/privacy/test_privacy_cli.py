"""`fl privacy epsilon` and `fl privacy sigma` (the click group, invoked with CliRunner)."""

from __future__ import annotations

import dp_accounting
import pytest
from click.testing import CliRunner
from dp_accounting import pld, rdp
from support import last_json

from federated.cli.privacy import privacy
from federated.privacy import compute_epsilon


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(privacy, list(args))
    return result.exit_code, result.output


def _library(kind: str, q: float, sigma: float, steps: int, delta: float) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant()
    return float(accountant.compose(event).get_epsilon(delta))


@pytest.mark.parametrize(("kind", "q", "sigma", "steps", "delta"), [
    ("rdp", 0.01, 1.1, 1000, 1e-5),
    ("rdp", 0.2, 0.7, 25, 1e-6),
    ("rdp", 1.0, 3.0, 4, 1e-5),
    ("pld", 0.01, 1.1, 1000, 1e-5),
    pytest.param("pld", 0.2, 0.9, 25, 1e-6, marks=pytest.mark.slow),
])
def test_epsilon_json_agrees_with_dp_accounting(
    kind: str, q: float, sigma: float, steps: int, delta: float
) -> None:
    code, output = _run("epsilon", "--sampling-rate", str(q), "--noise-multiplier", str(sigma),
                        "--steps", str(steps), "--delta", str(delta), "--accountant", kind, "--json")
    assert code == 0, output
    obj = last_json(output)
    assert set(obj) == {"epsilon", "delta", "accountant", "sampling_rate", "noise_multiplier", "steps"}
    assert (obj["accountant"], obj["sampling_rate"], obj["noise_multiplier"], obj["steps"], obj["delta"]) == (
        kind, q, sigma, steps, delta)
    assert obj["epsilon"] == pytest.approx(_library(kind, q, sigma, steps, delta), rel=1e-9)


def test_epsilon_human_output_and_no_noise() -> None:
    code, output = _run("epsilon", "-q", "0.01", "-s", "1.1", "-T", "1000", "--delta", "1e-5")
    assert code == 0 and output.startswith("epsilon = 1.71") and "rdp" in output
    code, output = _run("epsilon", "-q", "0.01", "-s", "0", "-T", "10", "--delta", "1e-5", "--json")
    assert code == 0 and last_json(output)["epsilon"] is None  # inf is not JSON; no noise, no privacy


def test_sigma_json_round_trips() -> None:
    code, output = _run("sigma", "--epsilon", "2", "--sampling-rate", "0.02", "--steps", "500",
                        "--delta", "1e-5", "--json")
    assert code == 0, output
    obj = last_json(output)
    assert set(obj) == {"noise_multiplier", "epsilon", "delta", "accountant", "sampling_rate", "steps"}
    sigma = obj["noise_multiplier"]
    assert isinstance(sigma, float)
    assert compute_epsilon(0.02, sigma, 500, 1e-5) <= 2.0 < compute_epsilon(0.02, sigma * 0.998, 500, 1e-5)
    code, output = _run("sigma", "-e", "2", "-q", "0.02", "-T", "500", "--delta", "1e-5")
    assert code == 0 and output.startswith("noise multiplier = ")


@pytest.mark.parametrize(("args", "flag"), [
    (["epsilon", "-q", "0", "-s", "1", "-T", "10", "--delta", "1e-5"], "'--sampling-rate'"),
    (["epsilon", "-q", "1.5", "-s", "1", "-T", "10", "--delta", "1e-5"], "'--sampling-rate'"),
    (["epsilon", "-q", "nan", "-s", "1", "-T", "10", "--delta", "1e-5"], "'--sampling-rate'"),
    (["epsilon", "-q", "0.1", "-s", "-1", "-T", "10", "--delta", "1e-5"], "'--noise-multiplier'"),
    (["epsilon", "-q", "0.1", "-s", "inf", "-T", "10", "--delta", "1e-5"], "'--noise-multiplier'"),
    (["epsilon", "-q", "0.1", "-s", "1", "-T", "0", "--delta", "1e-5"], "'--steps'"),
    (["epsilon", "-q", "0.1", "-s", "1", "-T", "10", "--delta", "1"], "'--delta'"),
    (["epsilon", "-q", "0.1", "-s", "1", "-T", "10", "--delta", "1e-5", "--accountant", "gdp"],
     "'--accountant'"),
    (["sigma", "-e", "0", "-q", "0.1", "-T", "10", "--delta", "1e-5"], "'--epsilon'"),
    (["sigma", "-e", "1e-9", "-q", "1", "-T", "1000", "--delta", "1e-5"], "'--epsilon'"),  # out of reach
    (["sigma", "-e", "1", "-q", "0.1", "-T", "10", "--delta", "0"], "'--delta'"),
])
def test_bad_values_are_usage_errors_naming_the_flag(args: list[str], flag: str) -> None:
    code, output = _run(*args)
    assert code == 2
    assert flag in output

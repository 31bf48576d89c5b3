"""The public surface of federated.privacy: exports, lazy imports, and the seed README snippets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import federated.privacy

SNIPPETS = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "snippets"


def test_all_is_sorted_and_every_name_resolves() -> None:
    exported = list(federated.privacy.__all__)
    assert exported == sorted(exported, key=lambda s: (not s.isupper(), s))
    for name in exported:
        assert getattr(federated.privacy, name) is not None
    assert set(exported) <= set(dir(federated.privacy))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        federated.privacy.nope  # noqa: B018


@pytest.mark.network  # a fresh interpreter
def test_import_loads_neither_mlx_nor_dp_accounting() -> None:
    # The broker imports this package and must not need MLX; a worker should not pay for SciPy.
    code = ("import sys; import federated.privacy as p; p.PrivacyBudgetTracker; p.noise_rng; "
            "p.DifferentialPrivacyManager; p.AdaptiveClipper; p.PrivacyAccountant; p.plan_skellam; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mlx', 'dp_accounting', 'scipy')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.network
@pytest.mark.slow  # a fresh interpreter that loads dp_accounting and SciPy: ~3 s
def test_accounting_without_mlx() -> None:
    code = ("import sys; from federated.privacy import DifferentialPrivacyManager as M; "
            "e, d = M(1.0, 1.0).compute_privacy_spent(100, 10, 1000); assert 0 < e < 10; "
            "assert not any(m.split('.')[0] == 'mlx' for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.skipif(not SNIPPETS.is_dir(), reason="shared/seed/snippets is not beside this checkout")
@pytest.mark.network
@pytest.mark.parametrize("snippet", [pytest.param("privacy_dp.py", marks=pytest.mark.slow), "privacy_budget.py"])
def test_seed_snippet_runs_as_written(snippet: str) -> None:
    proc = subprocess.run([sys.executable, snippet], cwd=SNIPPETS, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "the snippet must print its result"

"""A data problem in ``fl simulate`` fails at once with exit status 2 and the reason (issue 16, item 10;
it used to start the processes, wait 30 s and exit 130)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import run_fl

from federated.cli.exit_codes import CONFIG_ERROR


@pytest.mark.network  # fl in a process of its own
@pytest.mark.parametrize(("args", "reason"), [
    (("--num-clients", "1000"), "cannot give 1000 clients at least 2 each"),  # digits: 1,437 training samples
    (("--dataset", "synthetic:1000", "--num-clients", "1000"), "800 samples cannot give 1000 clients"),
    # Hopeless at 10,000 clients: fails after 100 draws (MAX_DIRICHLET_SHARES), not 1,000 (85 s).
    (("--dataset", "synthetic:25000", "--num-clients", "10000", "--partition", "dirichlet:0.1"),
     "after 100 draws some client still had"),
    (("--dataset", "npz:/nonexistent"), "/nonexistent"),
    (("--dataset", "leaf-synthetic:1,1", "--partition", "natural", "--num-clients", "10"),
     "has 30 devices, so the number of clients (--num-clients) must be 30, got 10"),
    (("--partition", "natural"), "digits/train has no natural split into devices"),
])
def test_a_data_problem_exits_2_before_any_process_starts(tmp_path: Path, args: tuple[str, ...], reason: str) -> None:
    proc = run_fl("simulate", "--store", str(tmp_path / "s.db"), *args, timeout=60)
    assert proc.returncode == CONFIG_ERROR, proc.stderr[-2000:]
    assert reason in proc.stderr
    assert not (tmp_path / "s.db").exists()  # no broker ever started

"""The seed README's server quick start, run as written (with a privacy budget of 1.0), served by real
workers over loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, Proc

from federated.broker.store import RoundStore

pytestmark = [pytest.mark.network, pytest.mark.slow]

SNIPPETS = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "snippets"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not SNIPPETS.is_dir(), reason="shared/seed/snippets is not beside this checkout")
def test_server_quickstart_runs_as_written_and_stops_within_its_privacy_budget(
        tmp_path: Path, procs: list[Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    if not _port_free(8080):
        pytest.skip("the snippet binds its default address 127.0.0.1:8080, which is taken here")
    # The snippet and its model, unchanged, in a scratch directory (its store goes to ./runs/latest).
    for name in ("server_quickstart.py", "model.py"):
        shutil.copy(SNIPPETS / name, tmp_path / name)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the workers import model:SimpleModel too
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "server_quickstart.py"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = np.random.default_rng(0)
    try:
        for i in range(10):
            data = tmp_path / f"data{i}"
            data.mkdir()
            x = rng.normal(size=(100, 10)).astype(np.float32)
            np.savez(data / "train.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
            worker = Proc([str(BIN / "flworker"), "--client-id", f"client_{i}", "--server-address", "127.0.0.1:8080",
                           "--data-path", str(data), "--model", "model:SimpleModel"])
            procs.append(worker)
        out, err = server.communicate(timeout=400)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err[-3000:]
    assert out.strip()
    with RoundStore(tmp_path / "runs" / "latest" / "store.db", readonly=True) as store:
        rounds = store.list_rounds()
        outcome = store.get_meta("outcome")
    complete = [r for r in rounds if r.status == "complete"]
    assert len(complete) == 100
    assert all(r.epsilon is not None and r.epsilon <= 1.0 for r in rounds)
    assert isinstance(outcome, dict) and outcome["privacy"]["calibrated"] and outcome["privacy"]["epsilon"] <= 1.0
    json.dumps(outcome)

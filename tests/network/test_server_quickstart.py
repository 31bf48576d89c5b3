"""The seed README's server quick start, run as written (with a privacy budget of 1.0) but on a free port,
served by real workers over loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import BIN, Proc, free_port, kill_group

from federated.broker.store import RoundStore

pytestmark = [pytest.mark.network, pytest.mark.slow]

SNIPPETS = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "snippets"

#: Runs the snippet file unchanged, with one difference: the server it makes listens on ``argv[1]`` (a free
#: port) instead of its config's default ``tcp://127.0.0.1:8080``, which another program may hold.
ON_A_FREE_PORT = """
import dataclasses, runpy, sys
import federated.server

bind, init = sys.argv[1], federated.server.FederatedServer.__init__

def init_on_a_free_port(self, config, *args, **kwargs):
    config = dataclasses.replace(config, broker=dataclasses.replace(config.broker, bind=bind))
    init(self, config, *args, **kwargs)

federated.server.FederatedServer.__init__ = init_on_a_free_port
runpy.run_path("server_quickstart.py", run_name="__main__")
"""


@pytest.mark.skipif(not SNIPPETS.is_dir(), reason="shared/seed/snippets is not beside this checkout")
def test_server_quickstart_runs_as_written_and_stops_within_its_privacy_budget(
        tmp_path: Path, procs: list[Proc], monkeypatch: pytest.MonkeyPatch) -> None:
    # The snippet and its model, unchanged, in a scratch directory (its store goes to ./runs/latest).
    for name in ("server_quickstart.py", "model.py"):
        shutil.copy(SNIPPETS / name, tmp_path / name)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the workers import model:SimpleModel too
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-c", ON_A_FREE_PORT, f"tcp://127.0.0.1:{port}"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    rng = np.random.default_rng(0)
    try:
        for i in range(10):
            data = tmp_path / f"data{i}"
            data.mkdir()
            for split, n in (("train", 100), ("test", 30)):  # each worker's own data, and its own test split
                x = rng.normal(size=(n, 10)).astype(np.float32)
                np.savez(data / f"{split}.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
            worker = Proc([str(BIN / "flworker"), "--client-id", f"client_{i}",
                           "--server-address", f"127.0.0.1:{port}", "--data-path", str(data),
                           "--model", "model:SimpleModel"])
            procs.append(worker)
        out, err = server.communicate(timeout=280)
    except subprocess.TimeoutExpired:
        kill_group(server)
        pytest.fail(f"the quick start did not finish within 280 s:\n{server.communicate()[1][-3000:]}")
    finally:
        kill_group(server)  # whatever failed; nothing to do once it has exited
    assert server.returncode == 0, err[-3000:]
    assert out.strip()
    # The server holds no data, so the accuracy it reports is the workers' federated evaluation.
    assert "final_accuracy=None" in out and "final_federated_accuracy=0." in out, out
    with RoundStore(tmp_path / "runs" / "latest" / "store.db", readonly=True) as store:
        rounds = store.list_rounds()
        outcome = store.get_meta("outcome")
    complete = [r for r in rounds if r.status == "complete"]
    assert len(complete) == 100
    assert all(r.fed_accuracy is not None for r in complete)
    assert all(r.epsilon is not None and r.epsilon <= 1.0 for r in rounds)
    assert isinstance(outcome, dict) and outcome["privacy"]["calibrated"] and outcome["privacy"]["epsilon"] <= 1.0
    json.dumps(outcome)

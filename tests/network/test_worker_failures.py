"""How a real ``flworker`` fails, seen from outside (issue 16, item 8): a broker key that is not the
broker's, a key the broker refuses (never enrolled, or revoked on a live connection), a closed port.
Each is reported as what it is, and the first two end the worker with their own exit status instead of
reconnecting forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import BIN, Proc, broker_config, free_port, run_fl

from federated.cli.exit_codes import CONFIG_ERROR, REFUSED
from federated.worker.loop import Outcome

pytestmark = [pytest.mark.network, pytest.mark.slow]


def fl_keys(*args: str) -> None:
    proc = run_fl("keys", *args, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def keyed_broker(tmp_path: Path, port: int) -> tuple[Proc, Path]:
    keys_dir = tmp_path / "broker-keys"
    fl_keys("broker", "--keys-dir", str(keys_dir))
    broker = Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--keys-dir", str(keys_dir),
                   "--config", str(broker_config(tmp_path, start_timeout_s=600.0)),
                   "--store", str(tmp_path / "store.db"), "--num-clients", "2", "--num-rounds", "1", "-v"])
    broker.wait_stderr("broker listening", timeout=60)
    return broker, keys_dir


def worker(tmp_path: Path, wid: str, port: int, broker_key: Path, *, enrol_in: Path | None) -> Proc:
    fl_keys("worker", "--client-id", wid, "--out", str(tmp_path / wid))
    if enrol_in is not None:
        fl_keys("enrol", str(tmp_path / wid / f"{wid}.pub"), "--keys-dir", str(enrol_in))
    return Proc([str(BIN / "flworker"), "--client-id", wid, "--server-address", f"127.0.0.1:{port}",
                 "--dataset", "digits", "--shard", "0", "--num-shards", "2",
                 "--keys", str(tmp_path / wid / f"{wid}.secret"), "--broker-key", str(broker_key)])


def test_exit_statuses_match_the_worker_loop_outcomes() -> None:
    assert (Outcome.BAD_SETTINGS, Outcome.REFUSED) == (CONFIG_ERROR, REFUSED)


def test_a_wrong_broker_key_ends_the_worker_with_status_2_and_says_so(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    broker, keys_dir = keyed_broker(tmp_path, port)
    procs.append(broker)
    fl_keys("broker", "--keys-dir", str(tmp_path / "impostor"))
    w = worker(tmp_path, "w0", port, tmp_path / "impostor" / "broker.key", enrol_in=keys_dir)
    procs.append(w)
    assert w.wait(60) == CONFIG_ERROR
    assert any("--broker-key is not this broker's key" in line for line in w.stderr_lines), w.stderr_lines[-5:]


def test_an_unenrolled_key_ends_the_worker_with_status_3(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    broker, keys_dir = keyed_broker(tmp_path, port)
    procs.append(broker)
    w = worker(tmp_path, "stranger", port, keys_dir / "broker.key", enrol_in=None)
    procs.append(w)
    assert w.wait(60) == REFUSED
    assert any("refused this worker's key" in line for line in w.stderr_lines), w.stderr_lines[-5:]


def test_a_revoked_worker_stops_with_status_3(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    broker, keys_dir = keyed_broker(tmp_path, port)
    procs.append(broker)
    w = worker(tmp_path, "w0", port, keys_dir / "broker.key", enrol_in=keys_dir)
    procs.append(w)
    w.wait_stderr("joined the broker", timeout=60)  # a live connection, waiting for a second worker
    fl_keys("revoke", "w0", "--keys-dir", str(keys_dir))
    assert w.wait(60) == REFUSED


def test_a_closed_port_is_reported_as_unreachable(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()  # nothing listens there
    fl_keys("broker", "--keys-dir", str(tmp_path / "keys"))
    w = worker(tmp_path, "w0", port, tmp_path / "keys" / "broker.key", enrol_in=None)
    procs.append(w)
    w.wait_stderr("cannot reach the broker", timeout=30)

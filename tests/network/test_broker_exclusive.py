"""One broker per store, and a busy port, each refused at once with exit status 2 and the reason (issue 16,
item 9: a second broker on a store ran a round and then died; a busy port gave a ZMQError traceback and
exit status 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import BIN, Proc, broker_config, free_port

from federated.cli.exit_codes import CONFIG_ERROR

pytestmark = [pytest.mark.network, pytest.mark.slow]


def broker(tmp_path: Path, port: int, store: Path) -> Proc:
    return Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--store", str(store),
                 "--config", str(broker_config(tmp_path, start_timeout_s=600.0)), "--num-clients", "2",
                 "--num-rounds", "1", "-v"])


def test_a_second_broker_on_the_same_store_exits_2(tmp_path: Path, procs: list[Proc]) -> None:
    store = tmp_path / "store.db"
    first = broker(tmp_path, free_port(), store)
    procs.append(first)
    first.wait_stderr("broker listening", timeout=60)
    second = broker(tmp_path, free_port(), store)
    procs.append(second)
    assert second.wait(60) == CONFIG_ERROR
    assert any("another broker" in line and "is running on the store" in line for line in second.stderr_lines), \
        second.stderr_lines[-5:]
    assert first.popen.poll() is None  # the first one is untouched


def test_a_busy_port_exits_2_without_a_traceback(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    first = broker(tmp_path, port, tmp_path / "a.db")
    procs.append(first)
    first.wait_stderr("broker listening", timeout=60)
    second = broker(tmp_path, port, tmp_path / "b.db")
    procs.append(second)
    assert second.wait(60) == CONFIG_ERROR
    assert any(f"cannot listen on tcp://127.0.0.1:{port}" in line for line in second.stderr_lines), \
        second.stderr_lines[-5:]
    assert not any("Traceback" in line for line in second.stderr_lines)

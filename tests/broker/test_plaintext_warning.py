"""A broker without transport keys warns when it listens beyond loopback.

README: without ``broker.keys_dir`` the broker speaks plain TCP, so anyone who can reach it can join and
read the models; on loopback that is only this machine, beyond it the operator is warned. The decision is
:func:`federated.broker.service._transport_keys`, called by :func:`serve` before anything binds, so it is
tested here directly: no socket is opened (and nothing ever listens beyond 127.0.0.1 in the tests).
"""

from __future__ import annotations

import logging

import pytest

from federated.broker.service import _transport_keys
from federated.config import BrokerConfig, FederatedConfig

WARNING = "no broker.keys_dir: plain TCP on"


def _warnings(bind: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="federated.broker"):
        keys, enrolment = _transport_keys(FederatedConfig(broker=BrokerConfig(bind=bind)))
    assert keys is None and enrolment is None
    return [r.getMessage() for r in caplog.records if r.name == "federated.broker" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:8080", "tcp://*:8080", "tcp://192.168.1.20:8080",
                                  "tcp://10.0.0.5:9000", "tcp://eth0:8080", "tcp://broker.example.org:8080"])
def test_plain_tcp_beyond_loopback_is_warned_about(bind: str, caplog: pytest.LogCaptureFixture) -> None:
    messages = _warnings(bind, caplog)
    assert len(messages) == 1
    assert messages[0].startswith(WARNING) and bind in messages[0]
    assert "anyone who can reach it can join and read models" in messages[0]


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:8080", "tcp://127.0.0.2:8080", "tcp://localhost:8080",
                                  "ipc:///tmp/fl-broker.sock", "inproc://broker"])
def test_loopback_and_local_transports_are_not_warned_about(bind: str, caplog: pytest.LogCaptureFixture) -> None:
    assert _warnings(bind, caplog) == []

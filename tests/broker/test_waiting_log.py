"""The broker says what it waits for (issue 16, item 7: with --secure and three workers, losing one left
the broker waiting with two live workers, silently)."""

from __future__ import annotations

import logging

import pytest
from support import CoordinatorHarness, harness_config

from federated.config import SecureConfig


def test_a_secure_broker_short_of_workers_says_what_it_needs(caplog: pytest.LogCaptureFixture) -> None:
    h = CoordinatorHarness(harness_config(secure=SecureConfig(enabled=True)))
    with caplog.at_level(logging.INFO, logger="federated.broker"):
        h.hello("w1")
        h.hello("w2")
        h.advance(40.0, alive=("w1", "w2"))  # past the start timeout, still short of a secure round
    waiting = [r.getMessage() for r in caplog.records if "waiting for workers" in r.getMessage()]
    assert waiting, caplog.text
    assert "a secure round needs at least 3" in waiting[-1]
    assert len(waiting) <= 5  # at most one line every 10 s, not one per tick
    assert h.coord.round is None


def test_a_plain_broker_says_how_many_it_has_and_needs(caplog: pytest.LogCaptureFixture) -> None:
    h = CoordinatorHarness()
    with caplog.at_level(logging.INFO, logger="federated.broker"):
        h.hello("w1")
        h.advance(1.0, alive=("w1",))
    assert any("1 live workers; a round needs 3 (or 2 after" in r.getMessage() for r in caplog.records), caplog.text

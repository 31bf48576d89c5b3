"""Fixtures of the worker tests: a free loopback port and a ZeroMQ context, terminated after the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq
from support import free_port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()

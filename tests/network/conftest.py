"""Fixtures for tests that start real broker and worker processes on 127.0.0.1 (the helpers they use, such
as ``Proc`` and ``free_port``, are in tests/support)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes started by a test; at teardown, whatever happened, each one's whole process group is
    killed."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()

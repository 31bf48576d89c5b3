"""The connection guard borrows libzmq's descriptors instead of duplicating them, so a descriptor number
can come back as a new connection that inherits the credit a closed one was handed (the guard never
resets credit: its events arrive late). These tests give a connection such leftover credit and check the
bound still holds: the leftover is removed at the first sample, never lets the new connection hold more
than the budget after it, and never gets an honest connection cut.

A kernel TCP pair on loopback stands in for libzmq: what the test reads off the accepted socket is what
libzmq would hold (read from the kernel, not yet handed to the broker), and ``credit`` is what the broker
was handed. No sockets of libzmq are involved, so the descriptor is the test's own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import zmq

from federated.broker.inflight import InflightGuard, _Connection

pytestmark = pytest.mark.skipif(not InflightGuard.available(), reason="TCP_INFO is Linux's")

BUDGET = 200_000
#: What an old connection on the same descriptor number was handed: far more than the new one receives.
LEFTOVER = 50_000_000


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


@pytest.fixture
def guard() -> Iterator[InflightGuard]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    yield InflightGuard(ctx, router, BUDGET, curve=False, heartbeat_interval_s=1.0)  # never started
    router.close(linger=0)
    ctx.term()


def _deliver(client: socket.socket, server: socket.socket, nbytes: int) -> None:
    """``nbytes`` from the client, read off the server side: held, as libzmq holds a partial message."""
    client.sendall(b"\0" * nbytes)
    got = 0
    server.settimeout(5.0)
    while got < nbytes:
        got += len(server.recv(nbytes - got))


def _closed_by_peer(client: socket.socket) -> bool:
    client.settimeout(5.0)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def test_leftover_credit_is_removed_and_does_not_stretch_the_budget(pair: tuple[socket.socket, socket.socket],
                                                                    guard: InflightGuard) -> None:
    client, server = pair
    fd = server.fileno()
    guard.credit(fd, LEFTOVER)  # a closed connection's, under the same descriptor number
    conn = _Connection(time.monotonic(), "new")
    _deliver(client, server, 10_000)  # received before the first sample: at most this is forgiven
    assert guard._check(fd, conn, time.monotonic())
    assert guard.excess == LEFTOVER - 10_000, "the leftover above what this connection received is removed"
    # From here on the new connection is accounted as any other: it may hold the budget (plus its
    # handshake allowance), and no more.
    allowance = 64 * 1024
    _deliver(client, server, BUDGET + allowance - 1_000)
    assert guard._check(fd, conn, time.monotonic()), "held the budget, not more: kept"
    _deliver(client, server, 2_000)
    assert not guard._check(fd, conn, time.monotonic()), "held more than the budget: cut"
    assert guard.cuts == 1 and _closed_by_peer(client)


def test_an_honest_connection_with_leftover_credit_is_never_cut(pair: tuple[socket.socket, socket.socket],
                                                               guard: InflightGuard) -> None:
    client, server = pair
    fd = server.fileno()
    guard.credit(fd, LEFTOVER)
    conn = _Connection(time.monotonic(), "honest")
    for _ in range(20):  # messages larger than the budget in all, each handed over once whole
        _deliver(client, server, BUDGET // 2)
        guard.credit(fd, BUDGET // 2)
        assert guard._check(fd, conn, time.monotonic())
    assert guard.cuts == 0 and max(guard.held.values()) <= 0

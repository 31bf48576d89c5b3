"""Socket options shared by the broker's ROUTER and the workers' DEALER sockets (DESIGN §4), and
CurveZMQ transport security.

With keys configured, the broker's ROUTER is a CURVE server and a ZAP handler (pyzmq's
``ThreadAuthenticator``) admits only enrolled worker keys: libzmq accepts *any* client key when no ZAP
handler runs, so :func:`start_authenticator` must run before the socket binds. Workers pin the broker's
public key, so a worker talking to the wrong broker completes no handshake and delivers nothing.
"""

from __future__ import annotations

import logging
import resource
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from federated.protocol import Limits

__all__ = ["FDS_PER_CONNECTION", "FD_MARGIN", "HWM_MESSAGES", "HWM_PER_SESSION", "ZMTP_PINGS_PER_S", "configure_socket",
           "context_for", "curve_client", "curve_server", "ensure_open_files", "shared_hwm", "start_authenticator"]

_log = logging.getLogger("federated.transport")

#: High-water marks in messages per peer, room for heartbeats behind a model-sized message. They count
#: whole messages, and one message may have any number of frames, so they do not bound memory: on the
#: broker that is the job of :class:`federated.broker.inflight.InflightGuard` (bytes per connection).
HWM_MESSAGES = 64
#: Messages a connection shared by many sessions (:mod:`federated.protocol.multiplex`) queues for each of
#: them, beyond :data:`HWM_MESSAGES`: a round's messages come for all of them at once (a TASK each, and in
#: secure rounds a roster, shares and an unmask request each), and their answers leave at once.
HWM_PER_SESSION = 4

#: ZMTP heartbeats (libzmq's own PING/PONG) a process should see per second, at most. libzmq cancels a
#: timer by scanning all of its timers, and each ping arms and cancels one per connection, so pinging
#: every second over 10,000 connections kept libzmq's I/O thread busy enough that it stopped accepting
#: connections (the accept queue overflowed at about 8,000). Spacing the pings out with the number of
#: connections costs nothing here: the application heartbeat decides liveness.
ZMTP_PINGS_PER_S = 100.0

#: File descriptors one worker connection costs: its DEALER socket's mailbox (an eventfd) and its TCP
#: connection. A broker pays one per connection (the TCP socket; its ROUTER's mailbox is shared).
#: Measured with ``ulimit -n`` at 20,000 (hard): 10,000 clients in two processes fit, with room.
FDS_PER_CONNECTION = 2
#: Descriptors left for everything else in a process: files, pipes, libzmq's I/O and reaper threads.
FD_MARGIN = 256


def configure_socket(sock: zmq.Socket[bytes], limits: Limits, heartbeat_interval_s: float,
                     heartbeat_timeout_s: float, *, connections: int = 1) -> None:
    """Options shared by broker and worker sockets: no lingering, bounded queues and frames, ZMTP pings.

    The ZMTP heartbeat timeout is at least 30 s so that a peer busy receiving an 8 MiB chunk on a slow
    link is not declared dead by libzmq; the application heartbeat decides liveness for rounds.
    ``connections`` is how many connections this process holds (a broker's workers, a simulation's
    virtual clients): ZMTP pings are spaced so the process sees at most :data:`ZMTP_PINGS_PER_S` of
    them a second (see there).
    """
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
    sock.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.socket_max_msg_size())  # per frame, not per message
    interval_ms = max(1, int(heartbeat_interval_s * 1000), int(connections / ZMTP_PINGS_PER_S * 1000))
    timeout_ms = max(30_000, int(heartbeat_timeout_s * 1000), 3 * interval_ms)
    sock.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)


def shared_hwm(sessions: int) -> int:
    """The high-water mark (messages) of a socket whose connection may carry ``sessions`` sessions. It
    counts messages, not bytes: the frames of one model sent to many sessions are shared, not copied."""
    return HWM_MESSAGES + HWM_PER_SESSION * max(0, sessions)


def start_authenticator(context: zmq.Context[zmq.Socket[bytes]], credentials: Any) -> ThreadAuthenticator:
    """Start a ZAP handler on ``context`` that admits a CURVE client only if
    ``credentials.callback(domain, z85_key)`` says so (an :class:`~federated.keys.Enrolment`).
    Stop it with ``.stop()`` after closing the sockets."""
    auth = ThreadAuthenticator(context, log=logging.getLogger("federated.broker.zap"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=credentials)
    return auth


def curve_server(sock: zmq.Socket[bytes], public: bytes, secret: bytes) -> None:
    """Make ``sock`` a CURVE server with this Z85 key pair (before bind). Every accepted message then
    carries the client's Z85 public key as its ``User-Id`` property."""
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)


def curve_client(sock: zmq.Socket[bytes], public: bytes, secret: bytes, server_public: bytes) -> None:
    """Make ``sock`` a CURVE client with its Z85 key pair, pinning the server's Z85 public key (before
    connect)."""
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)


def ensure_open_files(wanted: int) -> int:
    """Raise this process's soft limit on open files (``RLIMIT_NOFILE``) to ``wanted`` if it is lower, up
    to the hard limit; returns the soft limit now. A process that hosts thousands of connections (a
    simulation's worker, a broker of thousands of workers) needs more than the usual default of 1,024,
    and a soft limit is the process's own to raise. Logs a warning when the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return int(soft) if soft != resource.RLIM_INFINITY else wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, int(hard))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        _log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        return int(soft)
    if target < wanted:
        _log.warning("open-files limit %d (the hard limit) is below the %d this process may need: raise it "
                    "(ulimit -Hn) or host fewer connections per process", target, wanted)
    return target


def context_for(sockets: int) -> zmq.Context[zmq.Socket[bytes]]:
    """A new ZeroMQ context that can hold ``sockets`` sockets (libzmq's default stops at 1,023), in a
    process whose open-files limit was raised to match (:func:`ensure_open_files`). The caller owns it
    and terminates it."""
    # With room to spare: a closed socket keeps its slot and descriptors until libzmq's reaper thread gets
    # to it, so a burst of reconnections briefly holds old and new sockets side by side. (Slots cost
    # little; descriptors may meet a hard limit, so they get a quarter more.)
    ensure_open_files(sockets * FDS_PER_CONNECTION * 5 // 4 + FD_MARGIN)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    # Read by libzmq when the first socket is made, so it is set before any.
    context.max_sockets = max(context.max_sockets, 2 * sockets + 16)
    return context

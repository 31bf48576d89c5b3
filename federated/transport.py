"""Socket options shared by the broker's ROUTER and the workers' DEALER sockets (DESIGN §4), and
CurveZMQ transport security.

With keys configured, the broker's ROUTER is a CURVE server and a ZAP handler (pyzmq's
``ThreadAuthenticator``) admits only enrolled worker keys: libzmq accepts *any* client key when no ZAP
handler runs, so :func:`start_authenticator` must run before the socket binds. Workers pin the broker's
public key, so a worker talking to the wrong broker completes no handshake and delivers nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from federated.protocol import Limits

__all__ = ["HWM_MESSAGES", "configure_socket", "curve_client", "curve_server", "start_authenticator"]

#: High-water marks in messages per peer, room for heartbeats behind a model-sized message. They count
#: whole messages, and one message may have any number of frames, so they do not bound memory: on the
#: broker that is the job of :class:`federated.broker.inflight.InflightGuard` (bytes per connection).
HWM_MESSAGES = 64


def configure_socket(sock: zmq.Socket[bytes], limits: Limits, heartbeat_interval_s: float,
                     heartbeat_timeout_s: float) -> None:
    """Options shared by broker and worker sockets: no lingering, bounded queues and frames, ZMTP pings.

    The ZMTP heartbeat timeout is at least 30 s so that a peer busy receiving an 8 MiB chunk on a slow
    link is not declared dead by libzmq; the application heartbeat decides liveness for rounds.
    """
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
    sock.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.socket_max_msg_size())  # per frame, not per message
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(heartbeat_interval_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(30_000, int(heartbeat_timeout_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TTL, max(30_000, int(heartbeat_timeout_s * 1000)))


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

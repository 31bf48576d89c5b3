"""Socket options shared by the broker's ROUTER and the workers' DEALER sockets (DESIGN §4)."""

from __future__ import annotations

import zmq

from federated.protocol import Limits

__all__ = ["HWM_MESSAGES", "configure_socket"]

#: High-water marks in messages per peer. A model-sized message is many frames but one message, so this
#: bounds memory per peer at a few model copies while leaving room for heartbeats.
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
    sock.setsockopt(zmq.MAXMSGSIZE, limits.socket_max_msg_size())
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, int(heartbeat_interval_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(30_000, int(heartbeat_timeout_s * 1000)))
    sock.setsockopt(zmq.HEARTBEAT_TTL, max(30_000, int(heartbeat_timeout_s * 1000)))

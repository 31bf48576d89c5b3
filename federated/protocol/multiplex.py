"""Virtual connections: many worker sessions sharing one ZeroMQ connection, each still its own peer.

A process that hosts thousands of virtual clients (``fl simulate``) would otherwise open a DEALER socket
and a TCP connection for each, and libzmq spends about 50 KB on each side for every connection (its pipes
and stream buffers), whether or not that client is ever selected. Sharing one connection costs a tag:

- every message on a shared connection starts with a **tag frame**, ``MAGIC + op + tag``: ``op`` is
  :data:`MESSAGE` (the protocol message follows, unchanged) or :data:`CLOSED` (nothing follows: the
  session behind ``tag`` left, as a socket that closes would); ``tag`` is :data:`TAG_BYTES` bytes the
  sending process draws for each session's connection (a session that reconnects draws a new one);
- the broker's loop turns ``(routing id, tag)`` into one **virtual route** (:func:`virtual_route`) and
  hands the coordinator the message as if it came from a connection of its own. Everything the broker
  binds to a connection (a worker id at HELLO, the key it authenticated with) is bound to the virtual
  route, and answers go back with the tag frame in front (:func:`split_route`).

A virtual route is longer than any ZeroMQ routing id (at most 255 bytes), so no peer can name a routing
id equal to another's virtual route, and it embeds the connection's routing id, so a tag names a session
only on the connection that drew it: a peer can speak for, or close, only its own sessions. Under
CurveZMQ all sessions on one connection share its key, which is enrolled for one worker id, so sharing
a connection never lets a key speak for more workers than it could alone.
"""

from __future__ import annotations

import secrets

__all__ = ["CLOSED", "MAGIC", "MESSAGE", "TAG_BYTES", "TAG_FRAME_BYTES", "new_tag", "parse_tag_frame", "split_route", "tag_frame",
           "virtual_route"]

#: First bytes of a tag frame (a protocol message's first frame is its version, ``FL1``).
MAGIC = b"FLMX"
#: ``op`` of a tag frame a protocol message follows.
MESSAGE = b"m"
#: ``op`` of a tag frame alone: the session behind the tag closed its connection.
CLOSED = b"x"
#: Bytes of a tag.
TAG_BYTES = 8
#: Bytes of a tag frame.
TAG_FRAME_BYTES = len(MAGIC) + 1 + TAG_BYTES
#: ZeroMQ routing ids are 1 to 255 bytes (ZMTP's identity property); virtual routes are longer.
_ROUTING_ID_MAX = 255


def new_tag() -> bytes:
    """A fresh tag for one session's connection (random, so a reconnected session is a new peer)."""
    return secrets.token_bytes(TAG_BYTES)


def tag_frame(tag: bytes, *, closed: bool = False) -> bytes:
    """The frame that puts a message on ``tag``'s virtual connection (or, ``closed``, closes it).
    Raises ValueError for a tag that is not :data:`TAG_BYTES` bytes."""
    if len(tag) != TAG_BYTES:
        raise ValueError(f"a tag is {TAG_BYTES} bytes, got {len(tag)}")
    return MAGIC + (CLOSED if closed else MESSAGE) + tag


def parse_tag_frame(frame: bytes) -> tuple[bytes, bool] | None:
    """``(tag, closed)`` if ``frame`` is a tag frame, else None (a plain message's first frame)."""
    if len(frame) != TAG_FRAME_BYTES or not frame.startswith(MAGIC):
        return None
    op = frame[len(MAGIC):len(MAGIC) + 1]
    if op not in (MESSAGE, CLOSED):
        return None
    return frame[len(MAGIC) + 1:], op == CLOSED


def virtual_route(route: bytes, tag: bytes) -> bytes:
    """The route the broker knows the session behind ``tag`` on connection ``route`` by. Raises
    ValueError for a routing id longer than ZeroMQ allows or a tag of the wrong size."""
    if not 0 < len(route) <= _ROUTING_ID_MAX:
        raise ValueError(f"a routing id is 1 to {_ROUTING_ID_MAX} bytes, got {len(route)}")
    if len(tag) != TAG_BYTES:
        raise ValueError(f"a tag is {TAG_BYTES} bytes, got {len(tag)}")
    # Padded to the longest routing id, then its length: injective, and longer than any routing id.
    return route.ljust(_ROUTING_ID_MAX, b"\0") + bytes([len(route)]) + tag


def split_route(route: bytes) -> tuple[bytes, bytes | None]:
    """``(routing id, tag)`` of a virtual route; ``(route, None)`` for a connection's own routing id."""
    if len(route) <= _ROUTING_ID_MAX:
        return route, None
    size = route[_ROUTING_ID_MAX]
    return route[:size], route[_ROUTING_ID_MAX + 1:]

"""Messages as a socket carries them: frames as bytes, and messages through the real codec.

Tests that drive the coordinator or a worker session without sockets use these so that what the code under
test receives is exactly what ``recv_multipart`` would hand it (bytes, not the memoryviews ``to_frames``
may return), and so that every message a test makes crosses the real encoder and decoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from federated.protocol import Message, decode_message

__all__ = ["frames_of", "round_trip", "through_codec", "wire"]


def wire(frames: Iterable[Any]) -> list[bytes]:
    """``frames`` (bytes, memoryviews or ``zmq.Frame``s) as the list of bytes a socket hands over."""
    return [bytes(f) for f in frames]


def frames_of(msg: Message) -> list[bytes]:
    """A message's frames as bytes."""
    return wire(msg.to_frames())


def through_codec(frames: Iterable[Any]) -> Any:
    """Frames decoded by the real decoder, as the other end of a socket would read them. Typed ``Any`` so
    that a test can reach the fields of the kind it expects; raises ``ProtocolError`` like the decoder."""
    return decode_message(wire(frames))


def round_trip(msg: Message) -> Any:
    """``msg`` encoded and decoded again: what the other end of a socket would read."""
    return through_codec(msg.to_frames())

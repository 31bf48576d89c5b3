"""Errors raised while decoding or validating wire messages.

The tree::

    ProtocolError (ValueError)          anything wrong with bytes that came off the wire
     ├── MalformedMessage               bad framing, bad JSON, missing or mistyped header field
     ├── UnsupportedVersion             first frame is not a version this build speaks
     ├── UnknownKind                    kind frame names no message kind
     ├── LimitExceeded                  a size, count or length limit would be exceeded
     ├── BadTensor                      dtype not allowed, size does not match shape, non-finite values
     └── WrongStage                     a well-formed message for another round or stage (e.g. a replay)

Each carries a short machine-readable ``code`` that the broker echoes in its ERROR reply.
Decoding never raises anything else for bad input: callers catch ``ProtocolError`` and move on.
"""

from __future__ import annotations

from federated.protocol.codes import ErrorCode

__all__ = [
    "BadTensor",
    "LimitExceeded",
    "MalformedMessage",
    "ProtocolError",
    "UnknownKind",
    "UnsupportedVersion",
    "WrongStage",
]


class ProtocolError(ValueError):
    """Base of all wire-format errors. ``code`` is echoed to the peer in an ERROR message."""

    code: str = ErrorCode.PROTOCOL


class MalformedMessage(ProtocolError):
    """Framing, JSON or header-field problem."""

    code: str = ErrorCode.MALFORMED


class UnsupportedVersion(ProtocolError):
    """The version frame is not one this build speaks."""

    code: str = ErrorCode.VERSION


class UnknownKind(ProtocolError):
    """The kind frame names no known message kind."""

    code: str = ErrorCode.UNKNOWN_KIND


class LimitExceeded(ProtocolError):
    """A declared or actual size is above a configured limit (checked before allocating)."""

    code: str = ErrorCode.LIMIT


class BadTensor(ProtocolError):
    """A tensor frame's dtype, shape, length or values are not acceptable."""

    code: str = ErrorCode.BAD_TENSOR


class WrongStage(ProtocolError):
    """A valid message that does not belong to the current round or stage."""

    code: str = ErrorCode.WRONG_STAGE

"""Message kinds: the second frame of every message."""

from __future__ import annotations

from enum import Enum

__all__ = ["Kind"]


class Kind(str, Enum):
    """Every message kind the protocol knows. The value is what travels (ASCII)."""

    HELLO = "HELLO"
    WELCOME = "WELCOME"
    HEARTBEAT = "HEARTBEAT"
    TASK = "TASK"
    UPDATE = "UPDATE"
    ERROR = "ERROR"
    BYE = "BYE"
    # Secure aggregation stages (DESIGN §5); their payloads are defined with the crypto state machines.
    ADVERTISE_KEYS = "ADVERTISE_KEYS"
    ROSTER = "ROSTER"
    SHARE_KEYS = "SHARE_KEYS"
    SHARES = "SHARES"
    MASKED_INPUT = "MASKED_INPUT"
    CONSISTENCY_CHECK = "CONSISTENCY_CHECK"
    CONSISTENCY_SIGNATURE = "CONSISTENCY_SIGNATURE"
    UNMASK_REQUEST = "UNMASK_REQUEST"
    UNMASK_SHARES = "UNMASK_SHARES"

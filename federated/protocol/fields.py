"""Typed, bounded access to header fields, shared by every message module. Each failure names the
message kind and the field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from federated.protocol.errors import LimitExceeded, MalformedMessage
from federated.protocol.kinds import Kind
from federated.protocol.limits import Limits

__all__ = ["STAGE", "Fields", "validate_worker_id"]

_WORKER_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
STAGE = re.compile(r"[a-z_]{1,32}")


def validate_worker_id(worker_id: object) -> str:
    """Return ``worker_id`` if it is 1-128 characters of ``[A-Za-z0-9_.:@-]``, else raise MalformedMessage."""
    if not isinstance(worker_id, str) or not _WORKER_ID.fullmatch(worker_id):
        raise MalformedMessage(
            f"worker_id must be 1-128 characters of letters, digits and _.:@-, got {str(worker_id)[:40]!r}")
    return worker_id


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None if it is not a JSON number that fits one (bools excluded)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)  # a JSON integer may have thousands of digits: OverflowError
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class Fields:
    """Typed, bounded access to one header's fields; every failure names the field."""

    def __init__(self, header: Mapping[str, Any], kind: Kind, limits: Limits) -> None:
        self.h, self.kind, self.limits = header, kind, limits

    def _get(self, key: str) -> Any:
        if key not in self.h:
            raise MalformedMessage(f"{self.kind.value}: missing header field {key!r}")
        return self.h[key]

    def text(self, key: str, pattern: re.Pattern[str] | None = None, default: str | None = None) -> str:
        """The string at ``key`` (at most ``max_string_length``, matching ``pattern`` if given)."""
        if default is not None and key not in self.h:
            return default
        value = self._get(key)
        if not isinstance(value, str):
            raise MalformedMessage(f"{self.kind.value}: field {key!r} must be a string")
        if len(value) > self.limits.max_string_length:
            raise LimitExceeded(f"{self.kind.value}: field {key!r} is longer than "
                                f"{self.limits.max_string_length} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise MalformedMessage(f"{self.kind.value}: field {key!r} has an invalid value {value[:40]!r}")
        return value

    def integer(self, key: str, lo: int = 0, hi: int = 2**62, default: int | None = None) -> int:
        """The integer at ``key``, in ``[lo, hi]``; a JSON ``true`` is not an integer here."""
        if default is not None and key not in self.h:
            return default
        value = self._get(key)
        # bool is an int in Python; a JSON true must not pass as 1.
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise MalformedMessage(f"{self.kind.value}: field {key!r} must be an integer in [{lo}, {hi}]")
        return value

    def number(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        """The finite number at ``key``, in ``[lo, hi]``."""
        value = _finite(self._get(key))
        if value is None or not lo <= value <= hi:
            raise MalformedMessage(f"{self.kind.value}: field {key!r} must be a number in [{lo}, {hi}]")
        return value

    def obj(self, key: str, default: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if default is not None and key not in self.h:
            return dict(default)
        value = self._get(key)
        if not isinstance(value, dict):
            raise MalformedMessage(f"{self.kind.value}: field {key!r} must be an object")
        return value

    def metrics(self, key: str) -> dict[str, float]:
        value = self.obj(key, {})
        if len(value) > 64:
            raise LimitExceeded(f"{self.kind.value}: field {key!r} has more than 64 entries")
        out: dict[str, float] = {}
        for name, v in value.items():
            number = _finite(v)
            if len(name) > self.limits.max_string_length or number is None:
                raise MalformedMessage(f"{self.kind.value}: {key}[{name[:40]!r}] must be a finite number")
            out[name] = number
        return out

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.h.get(key, [])
        if not isinstance(value, list) or len(value) > self.limits.max_list_length:
            raise MalformedMessage(f"{self.kind.value}: field {key!r} must be a list of at most "
                                   f"{self.limits.max_list_length} strings")
        if not all(isinstance(v, str) and len(v) <= self.limits.max_string_length for v in value):
            raise MalformedMessage(f"{self.kind.value}: field {key!r} must contain short strings")
        return tuple(value)

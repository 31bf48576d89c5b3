"""Typed messages of the training protocol, and their strict decoding from an :class:`Envelope`.

Each class knows its :class:`Kind`, turns itself into frames (``to_frames``) and validates a decoded
envelope (``from_envelope``): every header field is checked for presence, type and range, so code past
this module never sees a malformed value. Unknown extra header fields are ignored, which lets a newer
peer add optional fields without breaking an older one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from federated.protocol.codec import Envelope, decode, encode
from federated.protocol.errors import MalformedMessage, UnknownKind
from federated.protocol.fields import STAGE, Fields, validate_worker_id
from federated.protocol.kinds import Kind
from federated.protocol.limits import Limits
from federated.protocol.secagg import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    MaskedInput,
    Roster,
    ShareKeys,
    Shares,
    UnmaskRequest,
    UnmaskShares,
)

_IDENTITY = re.compile(r"[0-9a-f]{64}")

__all__ = [
    "LOCAL_TIME_METRICS",
    "Bye",
    "Error",
    "Heartbeat",
    "Hello",
    "Message",
    "Task",
    "Update",
    "Welcome",
    "decode_message",
    "local_seconds",
    "validate_worker_id",
]

@dataclass(frozen=True)
class Hello:
    """Worker -> broker: announce (or re-announce after a reconnect) with its training-set size.

    ``identity`` is the hex of the worker's Ed25519 public key, which signs its secure-aggregation keys
    (empty if the worker cannot take part in secure rounds). The broker pins it at the first HELLO.
    """

    KIND: ClassVar[Kind] = Kind.HELLO
    worker_id: str
    num_samples: int
    capabilities: tuple[str, ...] = ()
    identity: str = ""

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id, "num_samples": self.num_samples,
                                  "capabilities": list(self.capabilities), "identity": self.identity})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Hello:
        f = Fields(env.header, env.kind, limits)
        identity = f.text("identity", _IDENTITY, default="") if env.header.get("identity") else ""
        return cls(validate_worker_id(f.text("worker_id")), f.integer("num_samples", 0, 2**40),
                   f.str_list("capabilities"), identity)


@dataclass(frozen=True)
class Welcome:
    """Broker -> worker: registration accepted, with the liveness timing the worker must keep (seconds)."""

    KIND: ClassVar[Kind] = Kind.WELCOME
    worker_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id,
                                  "heartbeat_interval_s": self.heartbeat_interval_s,
                                  "heartbeat_timeout_s": self.heartbeat_timeout_s})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Welcome:
        f = Fields(env.header, env.kind, limits)
        return cls(validate_worker_id(f.text("worker_id")), f.number("heartbeat_interval_s", 1e-3, 3600),
                   f.number("heartbeat_timeout_s", 1e-3, 86400))


@dataclass(frozen=True)
class Heartbeat:
    """Either direction: I am alive. Any message refreshes liveness; this one exists for idle periods."""

    KIND: ClassVar[Kind] = Kind.HEARTBEAT
    worker_id: str

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Heartbeat:
        return cls(validate_worker_id(Fields(env.header, env.kind, limits).text("worker_id")))


@dataclass(frozen=True)
class Task:
    """Broker -> worker: train on the global ``weights`` and answer with an UPDATE for this round.

    ``config`` is the training configuration (validated by the worker's trainer). ``cohort_index`` and
    ``cohort_size`` give the worker's position in this round's cohort; ``deadline_s`` is how long the
    broker waits for the answer (seconds from sending).
    """

    KIND: ClassVar[Kind] = Kind.TASK
    round_id: int
    stage: str
    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    cohort_index: int
    cohort_size: int
    deadline_s: float

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"round_id": self.round_id, "stage": self.stage, "config": self.config,
                                  "cohort_index": self.cohort_index, "cohort_size": self.cohort_size,
                                  "deadline_s": self.deadline_s}, self.weights)

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Task:
        f = Fields(env.header, env.kind, limits)
        size = f.integer("cohort_size", 1, limits.max_list_length)
        return cls(f.integer("round_id"), f.text("stage", STAGE), f.obj("config"), env.tensors,
                   f.integer("cohort_index", 0, size - 1), size, f.number("deadline_s", 0.0, 86400 * 7))


@dataclass(frozen=True)
class Update:
    """Worker -> broker: the result of a TASK: ``update`` = local weights - global weights.

    With compression on, ``update`` holds the codec's payload tensors and ``compression`` its metadata
    (validated by the codec's ``decode`` at the broker).
    """

    KIND: ClassVar[Kind] = Kind.UPDATE
    worker_id: str
    round_id: int
    stage: str
    num_samples: int
    metrics: dict[str, float]
    update: dict[str, np.ndarray]
    compression: dict[str, Any] = field(default_factory=dict)

    def to_frames(self) -> list[bytes | memoryview]:
        header = {"worker_id": self.worker_id, "round_id": self.round_id, "stage": self.stage,
                  "num_samples": self.num_samples, "metrics": self.metrics}
        if self.compression:
            header["compression"] = self.compression
        return encode(self.KIND, header, self.update)

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Update:
        f = Fields(env.header, env.kind, limits)
        return cls(validate_worker_id(f.text("worker_id")), f.integer("round_id"), f.text("stage", STAGE),
                   f.integer("num_samples", 1, 2**40), f.metrics("metrics"), env.tensors,
                   f.obj("compression", {}))


@dataclass(frozen=True)
class Error:
    """Either direction: a message was refused. ``code`` is a ProtocolError code or a broker code."""

    KIND: ClassVar[Kind] = Kind.ERROR
    code: str
    message: str
    round_id: int = -1

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"code": self.code, "message": self.message[:200],
                                  "round_id": self.round_id})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Error:
        f = Fields(env.header, env.kind, limits)
        return cls(f.text("code"), f.text("message"), f.integer("round_id", -1, 2**62, default=-1))


@dataclass(frozen=True)
class Bye:
    """Either direction: the sender is leaving (worker shutdown, or training finished)."""

    KIND: ClassVar[Kind] = Kind.BYE
    worker_id: str = ""
    reason: str = ""

    def to_frames(self) -> list[bytes | memoryview]:
        return encode(self.KIND, {"worker_id": self.worker_id, "reason": self.reason[:200]})

    @classmethod
    def from_envelope(cls, env: Envelope, limits: Limits) -> Bye:
        f = Fields(env.header, env.kind, limits)
        wid = f.text("worker_id", default="")
        return cls(validate_worker_id(wid) if wid else "", f.text("reason", default=""))


Message = (Hello | Welcome | Heartbeat | Task | Update | Error | Bye | AdvertiseKeys | Roster | ShareKeys | Shares
           | MaskedInput | ConsistencyCheck | ConsistencySignature | UnmaskRequest | UnmaskShares)
_CLASSES: dict[Kind, Any] = {c.KIND: c for c in (Hello, Welcome, Heartbeat, Task, Update, Error, Bye,
                                                 AdvertiseKeys, Roster, ShareKeys, Shares, MaskedInput,
                                                 ConsistencyCheck, ConsistencySignature, UnmaskRequest,
                                                 UnmaskShares)}
_TENSOR_KINDS = {k.value.encode() for k in (Kind.TASK, Kind.UPDATE, Kind.ADVERTISE_KEYS, Kind.ROSTER,
                                            Kind.SHARE_KEYS, Kind.SHARES, Kind.MASKED_INPUT,
                                            Kind.CONSISTENCY_SIGNATURE, Kind.UNMASK_REQUEST,
                                            Kind.UNMASK_SHARES)}


#: The UPDATE metrics that report a worker's local time, in seconds: training, scoring the global model
#: (federated evaluation) and, in simulation, queueing for a CPU shared with other virtual clients.
LOCAL_TIME_METRICS = ("train_s", "eval_s", "wait_s")


def local_seconds(metrics: Mapping[str, float]) -> float:
    """A worker's local time in seconds, from its UPDATE metrics: none of it is the broker's overhead."""
    return sum(float(metrics.get(name, 0.0)) for name in LOCAL_TIME_METRICS)


def decode_message(frames: Sequence[Any], limits: Limits | None = None) -> Message:
    """Decode frames into a typed message. Raises ProtocolError (never anything else) if malformed."""
    limits = limits or Limits()
    if len(frames) > 3 and bytes(getattr(frames[1], "buffer", frames[1])) not in _TENSOR_KINDS:
        # Checked before decoding, so a kind that carries no tensors cannot make us join chunks.
        raise MalformedMessage(f"a {bytes(getattr(frames[1], 'buffer', frames[1]))[:32]!r} message carries no "
                               "tensor frames")
    env = decode(frames, limits)
    cls = _CLASSES.get(env.kind)
    if cls is None:
        raise UnknownKind(f"{env.kind.value} is not a training-protocol message")
    msg: Message = cls.from_envelope(env, limits)
    return msg



"""Who may speak, and for which worker id: the broker's door.

With transport security the enrolment says which CURVE keys may connect; it is re-read when its files
change, and a worker whose key is revoked is removed from the registry on its live connection too. At
HELLO the key binds the worker id it is enrolled for (and the identity key that verifies its signatures);
every later message must come from the key enrolled for the worker id its connection is bound to, and
claim that id. The routing id is the peer's to choose, so it never says who speaks on its own.

Without an enrolment, a worker's Ed25519 identity key is pinned at its first HELLO; a live worker's id
cannot be taken over with another key.

Refusals are counted and logged at most once a second (with the number left unlogged), so a flood of
junk does not turn into a flood of log lines.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from federated.broker.registry import WorkerRegistry
from federated.keys import EnrolledWorker, Enrolment
from federated.protocol import Bye, Error, ErrorCode, Hello

__all__ = ["Admission", "Door", "Refusal"]

log = logging.getLogger("federated.broker")

#: Seconds between two looks at the enrolment's files.
ENROLMENT_CHECK_S = 0.2


@dataclass(frozen=True)
class Refusal:
    """A message the broker refuses: the ERROR's ``code`` (an :class:`ErrorCode`, or a
    :class:`~federated.protocol.ProtocolError`'s code) and a message for the peer."""

    code: str
    message: str


@dataclass(frozen=True)
class Door:
    """What the door decided about a message before it is decoded.

    ``enrolled``: the enrolled worker whose key the connection authenticated with (None without an
    enrolment); ``revoked``: registered workers found revoked just now, already removed from the registry
    (the caller drops them from the round); ``refusal``: why the message is refused, if it is;
    ``connection_revoked``: the refused connection itself belonged to a revoked worker.
    """

    enrolled: EnrolledWorker | None
    revoked: list[str]
    refusal: Refusal | None = None
    connection_revoked: bool = False


class Admission:
    """The door: enrolment (None without transport security), bound keys, pinned identities, refusals.

    ``registry`` is the coordinator's; the door removes from it the workers it finds revoked.
    """

    def __init__(self, registry: WorkerRegistry, enrolment: Enrolment | None) -> None:
        self.registry = registry
        self.enrolment = enrolment
        #: Ed25519 identity keys pinned at each worker's first HELLO (they sign secure-aggregation keys).
        self.identities: dict[str, bytes] = {}
        #: The CURVE key each registered worker authenticated with (with an enrolment).
        self.keys: dict[str, str] = {}
        self._checked = -math.inf
        self._last_log = -math.inf
        self._unlogged = 0

    # -- enrolment

    def refresh(self, now: float) -> list[str]:
        """Re-read the enrolment if its files changed (at most every 0.2 s); return the registered workers
        whose key is no longer enrolled, already removed from the registry (the caller drops them)."""
        if self.enrolment is None or now - self._checked < ENROLMENT_CHECK_S:
            return []
        self._checked = now
        if not self.enrolment.reload_if_changed():
            return []
        revoked = []
        for wid in self.registry.live_ids():
            key = self.keys.get(wid)
            entry = self.enrolment.by_curve_key(key) if key else None
            if entry is None or entry.worker_id != wid:
                log.warning("worker %s is no longer enrolled; disconnecting it", wid)
                self.forget(wid)
                revoked.append(wid)
        return revoked

    def enrolled(self, peer: str | None) -> EnrolledWorker | None:
        """The enrolled worker whose CURVE key ``peer`` (Z85) is, or None."""
        return self.enrolment.by_curve_key(peer) if self.enrolment is not None and peer else None

    def forget(self, worker_id: str) -> None:
        """Remove ``worker_id`` from the registry and unbind its key."""
        self.registry.remove(worker_id)
        self.keys.pop(worker_id, None)

    # -- checks

    def door(self, route: bytes, frames: Sequence[Any], peer: str | None, now: float) -> Door:
        """Check a message from connection ``route`` before decoding it: with an enrolment, the key it came
        with (``peer``, Z85) must be enrolled, checked on every message so that a revoked worker is refused
        on a live connection. Tensor frames from a connection that never said HELLO are refused before
        decoding (joining chunks, scanning for NaN), so a stranger cannot make the broker work in
        proportion to what it sends; HELLO, BYE and ERROR, all a stranger may send, carry no tensors."""
        revoked = self.refresh(now)
        enrolled = None
        if self.enrolment is not None:
            enrolled = self.enrolled(peer)
            if enrolled is None:
                wid = self.registry.id_of(route)
                if wid is None:
                    return Door(None, revoked, Refusal(ErrorCode.NOT_ENROLLED,
                                                       "this key is not enrolled with the broker"))
                self.forget(wid)  # revoked while connected
                return Door(None, [*revoked, wid], Refusal(ErrorCode.NOT_ENROLLED,
                                                           "this key is not enrolled (revoked)"),
                            connection_revoked=True)
        if len(frames) > 3 and self.registry.id_of(route) is None:
            return Door(enrolled, revoked, Refusal(ErrorCode.UNKNOWN_WORKER,
                                                   "unknown connection: send HELLO first"))
        return Door(enrolled, revoked)

    def admit_hello(self, msg: Hello, enrolled: EnrolledWorker | None, peer: str | None) -> Hello | Refusal:
        """Check a HELLO against the enrolment (its key must be enrolled for the id it announces, with the
        identity key it carries) and the pinned identity; bind the key and pin the identity. Returns the
        HELLO to act on: with an enrolment it carries the enrolled identity key, not the one sent."""
        if enrolled is not None:
            if msg.worker_id != enrolled.worker_id:
                return Refusal(ErrorCode.WRONG_WORKER,
                               f"this key is enrolled as {enrolled.worker_id!r}, not {msg.worker_id!r}")
            if msg.identity and msg.identity != enrolled.identity_public.hex():
                return Refusal(ErrorCode.IDENTITY_MISMATCH,
                               "identity key differs from the one enrolled for this worker")
            msg = replace(msg, identity=enrolled.identity_public.hex())
            self.keys[msg.worker_id] = str(peer)
        if msg.identity:
            pinned = self.identities.get(msg.worker_id)
            identity = bytes.fromhex(msg.identity)
            if pinned is not None and pinned != identity:
                if msg.worker_id in self.registry:
                    return Refusal(ErrorCode.IDENTITY_MISMATCH,
                                   f"{msg.worker_id} is connected with a different identity key")
                # The old session is gone (a restarted worker makes a new key): pin the new one.
                log.warning("worker %s came back with a new identity key", msg.worker_id)
            self.identities[msg.worker_id] = identity
        return msg

    def speaker(self, route: bytes, msg: Any, enrolled: EnrolledWorker | None) -> str | Refusal | None:
        """The worker a message after HELLO speaks for: the one its connection is bound to, if the key it
        came with is enrolled for that worker and the message claims no other id. None: a BYE or ERROR
        from a connection that never said HELLO, to be ignored."""
        wid = self.registry.id_of(route)
        if wid is None:
            if isinstance(msg, (Bye, Error)):
                log.info("ignoring %s from a connection that never said HELLO", type(msg).__name__)
                return None
            return Refusal(ErrorCode.UNKNOWN_WORKER, "unknown connection: send HELLO first")
        if enrolled is not None and enrolled.worker_id != wid:
            return Refusal(ErrorCode.WRONG_WORKER,
                           f"this key is enrolled as {enrolled.worker_id!r}, not {wid!r}")
        claimed = getattr(msg, "worker_id", wid)
        if claimed and claimed != wid:
            return Refusal(ErrorCode.WRONG_WORKER, f"worker_id {claimed!r} does not match this connection")
        return wid

    def register(self, route: bytes, msg: Hello, now: float) -> tuple[bool, list[tuple[str, str]]]:
        """Register the worker an admitted HELLO announces, on ``route``. Returns whether this is a new
        session (False: the same connection announcing itself again, e.g. a worker whose queued heartbeats
        reached a restarted broker answers each refusal with a HELLO; nothing is lost), and the workers
        that became dropouts, with the reason: the worker's own previous connection (``reconnected``), or
        another worker whose connection now speaks for this one (``displaced``: it can neither answer nor
        expire any more, so it is a dropout now rather than at the round's deadline)."""
        known = self.registry.get(msg.worker_id)
        if known is not None and known.route == route:
            self.registry.touch(msg.worker_id, now)
            return False, []
        dropouts = []
        displaced = self.registry.id_of(route)
        previous = self.registry.register(msg.worker_id, route, msg.num_samples, now)
        if displaced is not None and displaced != msg.worker_id:
            log.warning("connection of worker %s now speaks for %s; %s removed", displaced, msg.worker_id,
                        displaced)
            dropouts.append((displaced, "displaced"))
        if previous is not None:
            log.info("worker %s re-announced itself (new connection)", msg.worker_id)
            dropouts.append((msg.worker_id, "reconnected"))
        else:
            log.info("worker %s joined with %d samples", msg.worker_id, msg.num_samples)
        return True, dropouts

    # -- refusals

    def note(self, route: bytes, refusal: Refusal) -> None:
        """Log a refusal, at most one line a second."""
        now = time.monotonic()
        if now - self._last_log >= 1.0:
            more = f" (and {self._unlogged} more refusals since the last line)" if self._unlogged else ""
            log.warning("refused a message from connection %s: %s: %s%s", route.hex()[:16], refusal.code,
                        refusal.message, more)
            self._last_log, self._unlogged = now, 0
        else:
            self._unlogged += 1

    def flush_log(self) -> None:
        """Log how many refusals went unlogged since the last line."""
        if self._unlogged:
            log.warning("and %d more refusals since the last line", self._unlogged)
            self._unlogged = 0

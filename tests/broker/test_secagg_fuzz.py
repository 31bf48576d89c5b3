"""Malformed, out-of-place and forged secure-aggregation messages thrown at the broker mid-round.

The rule under test (coordinator docstring): a malformed or out-of-place message is answered with an
ERROR (or ignored) and changes no state. A real :class:`Coordinator` runs a real secure round with real
:class:`~federated.crypto.secagg_worker.SecAggWorker` state machines, in memory, and at every secure stage
(right after TASK, ROSTER, SHARES and UNMASK_REQUEST went out, before anyone answered) we inject, from a
cohort member's connection, from a registered worker outside the cohort and from a connection that never
said HELLO:

- random frames and broken framing;
- secure-aggregation messages for another round, or naming another worker;
- blobs of the wrong width (c_pk of 31 bytes, ciphertexts one byte short or long, 65-byte shares) and
  masked vectors of the wrong length or dtype (uint16 in a 32-bit round and vice versa, float32, int32);
- duplicates (a second ADVERTISE_KEYS or MASKED_INPUT after the member answered) and replays of the
  previous round;
- answers of the wrong stage, and kinds only the broker sends;
- SHARE_KEYS whose recipients are not the sender's neighbours, UNMASK_SHARES for owners the sender does
  not hold or of the wrong kind (with and without a dropout), and in a bucketed round;

and check that ``handle`` never raises, that each gets exactly one ERROR and leaves the state (stage,
pending and dropped workers, collected keys, shares and inputs, registry, model) untouched, and that the
honest round then completes with every worker and exactly the mean of the unfuzzed round.

Three hypothesis properties mutate a member's valid answer mid-round (bytes flipped, frames cut, dropped
or extended; header fields replaced, deleted or permuted) or send random frames: ``handle`` never raises,
and the round ends exact, or (when the mutated message still decoded and was kept) sound: complete with
exactly its survivors' mean, or failed with the model unchanged.

Some well-formed contents cannot be told from honest ones by the broker (a member's own signed keys,
AES-GCM ciphertexts only the recipient can open, Shamir shares only the reconstruction checks, the
masked vector itself). When a member sends those in place of its answer the broker keeps them; the
tests at the end document what follows. The last three tests pin bugs these tests found and that are
fixed: a negative summed weight raised out of ``handle`` (it would have stopped the broker), and two
malformed values (shares outside the field, a low-order X25519 key) were accepted rather than refused.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import SECURE_WEIGHTS, SecureFakeWorker, frames_of

from federated.broker.coordinator import Coordinator, Outbound
from federated.config import AggregationConfig, BrokerConfig, EvaluationConfig, FederatedConfig, SecureConfig
from federated.crypto.errors import CryptoError
from federated.crypto.params import SecAggParams, advertise_message
from federated.crypto.primitives import generate_identity, generate_x25519, sign
from federated.crypto.secagg_broker import SecAggBroker
from federated.protocol import (
    CIPHERTEXT_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    Bye,
    ConsistencyCheck,
    ConsistencySignature,
    Error,
    Heartbeat,
    Hello,
    Kind,
    MaskedInput,
    Roster,
    ShareKeys,
    Shares,
    Task,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
    encode,
)

Frames = list[bytes]
Case = tuple[str, Frames, frozenset[str]]  # label, frames, the ERROR codes that may answer them

#: The stage a broker message opens, and the answer that stage expects.
STAGE_OF: dict[type[Any], str] = {Task: "advertise", Roster: "share_keys", Shares: "masked_input",
                             ConsistencyCheck: "consistency", UnmaskRequest: "unmask"}
ANSWER_OF: dict[str, type[Any]] = {"advertise": AdvertiseKeys, "share_keys": ShareKeys,
                              "masked_input": MaskedInput, "consistency": ConsistencySignature,
                              "unmask": UnmaskShares}
STAGES = tuple(ANSWER_OF)

MEMBER, OTHER = b"w0", b"w1"  # cohort members' connections (we speak for w0)
OUTSIDER = b"x0"  # said HELLO, but is in no secure cohort
GHOST = b"ghost"  # never said HELLO

#: ERROR codes for bytes that do not decode (federated.protocol.errors).
UNDECODABLE = frozenset({"malformed", "version", "unknown_kind", "limit", "bad_tensor", "protocol"})
#: A decoded secure-aggregation message the state machine refuses (any CryptoError).
SECAGG = frozenset({"secagg"})
WRONG_STAGE = frozenset({"wrong_stage"})
WRONG_WORKER = frozenset({"wrong_worker"})

DELTAS = (0.1, -0.2, 0.4, 0.0, 0.3)
# Fixed-point rounding moves the mean by at most n * 2^-frac_bits / total weight (about 1.5e-5 here);
# means over different sets of these workers differ by more than 1e-2.
ATOL = 1e-4


# ------------------------------------------------------------------------------------------- workers


class Worker(SecureFakeWorker):
    """A SecureFakeWorker that, like the real worker loop (``federated.worker.loop._on_secagg``), answers a
    step its state machine refuses with ERROR "secagg_refused" and leaves the round (the broker then
    counts it as dropped at that stage's deadline)."""

    def __init__(self, wid: str, samples: int, delta: float) -> None:
        super().__init__(wid, samples, delta)
        self.left: set[int] = set()
        self.refusals: list[str] = []

    def answer(self, msg: Any) -> Any:
        round_id = getattr(msg, "round_id", None)
        if round_id in self.left:
            return None
        try:
            return super().answer(msg)
        except (CryptoError, ValueError) as exc:
            assert isinstance(round_id, int)
            self.left.add(round_id)
            self.refusals.append(f"{type(msg).__name__}: {exc}")
            return Error("secagg_refused", str(exc), round_id)


class Vanishing(Worker):
    """A worker that leaves (BYE) instead of answering broker messages of type ``at``."""

    def __init__(self, wid: str, samples: int, delta: float, at: type) -> None:
        super().__init__(wid, samples, delta)
        self.at = at

    def answer(self, msg: Any) -> Any:
        if isinstance(msg, self.at):
            return Bye(self.wid, "vanished")
        return super().answer(msg)


def cohort(n: int = 5) -> list[Worker]:
    """Workers w0..w{n-1} with distinct sample counts and deltas (so every subset has its own mean)."""
    return [Worker(f"w{i}", 10 + 7 * i, DELTAS[i % len(DELTAS)] + 0.01 * i) for i in range(n)]


def secure_config(n: int, *, rounds: int = 1, compression: str = "none", clip: float = 100.0,
                  bucket_size: int | None = None) -> FederatedConfig:
    # Liveness timeouts far beyond the deadlines we skip to: only stage deadlines drop anyone here.
    return FederatedConfig(num_clients=n, clients_per_round=n, num_rounds=rounds, min_clients=2,
                           compression=compression, secure=SecureConfig(enabled=True, clip=clip),
                           aggregation=AggregationConfig(bucket_size=bucket_size),
                           broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0),
                           evaluation=EvaluationConfig(every=0))


# ------------------------------------------------------------------------------------ state, refusals


def state_of(c: Coordinator) -> Any:
    """Everything a refused message must leave alone: the round, its cohort and dropouts, the registry,
    pinned identities, the model, and each bucket's stage, pending/dropped workers and collected
    answers (by identity: a refused message must not replace an answer)."""
    rnd = c.round
    machines: list[SecAggBroker] = [] if rnd is None or rnd.secure is None else rnd.secure.machines
    return (
        c.completed, len(c.history), c.next_round_id, c.done,
        None if rnd is None else (rnd.round_id, tuple(rnd.cohort), dict(rnd.dropped), len(rnd.updates)),
        tuple(sorted(c.registry.live_ids())), tuple(sorted(c.identities.items())),
        tuple((k, v.tobytes()) for k, v in sorted(c.weights.items())),
        [(m.stage, tuple(sorted(m.pending)), tuple(sorted(m.dropped.items())), m.error, m.result,
          tuple(sorted(m._keys.items())), tuple(sorted(m._sigs.items())),
          tuple(sorted((k, id(v)) for k, v in m._shares.items())),
          tuple(sorted(m._masked.items())), None if m._sum is None else m._sum.tobytes(),
          tuple(sorted((k, id(v)) for k, v in m._unmask.items()))) for m in machines],
    )


def assert_refused(c: Coordinator, route: bytes, frames: Sequence[bytes], codes: Collection[str],
                   now: float, label: str = "") -> str:
    """``frames`` from ``route`` get exactly one ERROR, to the sender, with a code in ``codes``; nothing
    is sent to anyone else and no state changes. Returns the code."""
    before = state_of(c)
    out = c.handle(route, list(frames), now)
    assert [o.route for o in out] == [route], (label, out)
    reply = decode_message([bytes(f) for f in out[0].frames])
    assert isinstance(reply, Error), (label, reply)
    assert reply.code in codes, (label, reply)
    assert state_of(c) == before, f"{label}: a refused message changed the broker's state"
    return reply.code


def assert_ignored(c: Coordinator, route: bytes, frames: Sequence[bytes], now: float, label: str) -> None:
    """``frames`` get no answer at all and change no state (an ERROR from a worker, a BYE from a stranger)."""
    before = state_of(c)
    assert c.handle(route, list(frames), now) == [], label
    assert state_of(c) == before, f"{label}: an ignored message changed the broker's state"


# ------------------------------------------------------------------------------------------- harness


class Harness:
    """A secure round in memory: the coordinator, the queue of broker messages for the workers, and
    the time. The cohort is drawn at construction; then OUTSIDER says HELLO without an identity key,
    so it is registered but can never be drawn into a secure cohort, not even in a later round."""

    def __init__(self, workers: Sequence[Worker], config: FederatedConfig | None = None) -> None:
        self.workers = {w.wid.encode(): w for w in workers}
        self.c = Coordinator(config or secure_config(len(workers)), SECURE_WEIGHTS)
        self.now = 0.0
        self.queue: list[Outbound] = []
        self.inbox: dict[bytes, list[Any]] = {}  # what connections other than our workers' received
        self.log: list[tuple[bytes, int, Frames]] = []  # every secure answer a worker sent
        for w in workers:
            self._dispatch(self.c.handle(w.wid.encode(), w.hello.to_frames(), 0.0))
        self._dispatch(self.c.tick(0.0))
        assert self.c.round is not None and self.c.round.secure is not None
        self._secure = self.c.round.secure
        self._dispatch(self.c.handle(OUTSIDER, Hello("x0", 10).to_frames(), 0.0))
        self.outsider_identity = generate_identity()[0]  # a key the broker never pinned for anyone

    # -- what the tests read

    @property
    def rid(self) -> int:
        """The current round, or the last one once it is over."""
        return self.c.round.round_id if self.c.round is not None else self.c.next_round_id - 1

    @property
    def machine(self) -> SecAggBroker:
        """w0's bucket in the current round (the last round's, once it is over)."""
        if self.c.round is not None and self.c.round.secure is not None:
            self._secure = self.c.round.secure
        return self._secure.machine_of("w0")

    @property
    def params(self) -> SecAggParams:
        return self.machine.params

    def neighbours(self, wid: str = "w0") -> tuple[str, ...]:
        """``wid``'s neighbours once the roster is out; before, its bucket-mates (a guess that does not
        matter: out of its stage a SHARE_KEYS is refused whatever its recipients)."""
        machine = self.machine
        if wid in machine.graph:
            return machine.graph[wid]
        return tuple(sorted(w for w in machine.identities if w != wid))

    # -- talking to the broker

    def _dispatch(self, out: Sequence[Outbound]) -> None:
        for o in out:
            if o.route in self.workers:
                self.queue.append(o)
            else:
                self.inbox.setdefault(o.route, []).append(decode_message([bytes(f) for f in o.frames]))

    def inject(self, route: bytes, frames: Sequence[bytes]) -> list[Any]:
        """Hand ``frames`` to the broker from ``route`` as the socket loop would and deliver whatever it
        sends (the next stage, if this closed one; ERRORs, which workers ignore). Returns the decoded
        messages for ``route``."""
        out = self.c.handle(route, list(frames), self.now)  # must never raise
        self._dispatch(out)
        return [decode_message([bytes(f) for f in o.frames]) for o in out if o.route == route]

    def refused(self, route: bytes, frames: Sequence[bytes], codes: Collection[str], label: str = "") -> str:
        return assert_refused(self.c, route, frames, codes, self.now, label)

    def ignored(self, route: bytes, frames: Sequence[bytes], label: str = "") -> None:
        assert_ignored(self.c, route, frames, self.now, label)

    # -- running rounds

    def run(self, *, rounds: int = 1,
            on_stage: Callable[[Harness, str], None] | None = None,
            before_answer: Callable[[Harness, str, Worker, Frames], None] | None = None,
            after_answer: Callable[[Harness, str, Worker], None] | None = None) -> None:
        """Deliver broker messages to the workers and their answers to the broker until ``rounds`` rounds
        are recorded. ``on_stage`` runs when a stage's first message is delivered (no one has answered
        it yet); ``before_answer``/``after_answer`` around each worker's secure answer. With nothing in
        flight, time jumps to the round's next deadline, so silent workers are dropped as in production."""
        seen: set[tuple[int, str]] = set()
        for _ in range(10_000):
            if len(self.c.history) >= rounds:
                return  # (the next round may have started already: a failed round is retried at once)
            if not self.queue:
                deadline = self.c.round.deadline if self.c.round is not None else self.now
                self.now = max(self.now, deadline) + 0.001
                self._dispatch(self.c.tick(self.now))
                continue
            out = self.queue.pop(0)
            worker = self.workers[out.route]
            msg: Any = decode_message([bytes(f) for f in out.frames])
            stage = STAGE_OF.get(type(msg))
            if stage is not None and (msg.round_id, stage) not in seen:
                seen.add((msg.round_id, stage))
                if on_stage is not None:
                    on_stage(self, stage)
            answer = worker.answer(msg)
            if answer is not None:
                frames = [bytes(f) for f in answer.to_frames()]
                if stage is not None and isinstance(answer, ANSWER_OF[stage]):
                    self.log.append((out.route, answer.round_id, frames))
                    if before_answer is not None:
                        before_answer(self, stage, worker, frames)
                self.inject(out.route, frames)
                if stage is not None and after_answer is not None:
                    after_answer(self, stage, worker)
            self.now += 0.001
        raise AssertionError("the round never finished")


# ------------------------------------------------------------------------------------------ outcomes


def mean_of(workers: Sequence[Worker], ids: Collection[str]) -> float:
    """The sample-weighted mean delta of ``ids``: what a complete round adds to every weight."""
    chosen = [w for w in workers if w.wid in ids]
    return sum(w.samples * float(w.update["b"][0]) for w in chosen) / sum(w.samples for w in chosen)


def assert_exact(h: Harness, workers: Sequence[Worker], survivors: Collection[str], rounds: int = 1) -> None:
    record = h.c.history[-1]
    assert record.status == "complete", record.error
    assert set(record.survivors) == set(survivors), record
    expected = rounds * mean_of(workers, survivors)
    for name, value in h.c.weights.items():
        np.testing.assert_allclose(value, expected, atol=ATOL, err_msg=name)


def assert_sound(h: Harness, workers: Sequence[Worker]) -> None:
    """What must hold even when a member slipped in contents the broker cannot check: the round either
    completes with exactly its survivors' mean, or fails with the model unchanged."""
    record = h.c.history[-1]
    if record.status == "complete":
        assert len(record.survivors) >= h.params.threshold
        assert_exact(h, workers, record.survivors)
    else:
        assert record.status == "failed" and record.error
        assert all(np.array_equal(v, SECURE_WEIGHTS[k]) for k, v in h.c.weights.items())


# ------------------------------------------------------------------------------------ message makers


def raw(kind: Kind, header: dict[str, Any], tensors: dict[str, np.ndarray] | None = None) -> Frames:
    """Frames of any shape, bypassing the message classes (so widths and dtypes can be wrong)."""
    return [bytes(f) for f in encode(kind, header, tensors or {})]


def u8(rows: int, width: int, fill: int | None = None) -> np.ndarray:
    """A (rows, width) uint8 blob: ``fill`` everywhere, or seeded noise."""
    if fill is not None:
        return np.full((rows, width), fill, np.uint8)
    return np.random.default_rng(rows * 1000 + width).integers(0, 256, (rows, width), dtype=np.uint8)


def blob(data: bytes, dtype: Any = np.uint8) -> np.ndarray:
    return np.frombuffer(data, dtype)


def edit_header(frames: Frames, old: bytes, new: bytes) -> Frames:
    """The same message with ``old`` replaced by ``new`` in its header JSON (tensor frames untouched)."""
    assert old in frames[2], (old, frames[2])
    return [frames[0], frames[1], frames[2].replace(old, new), *frames[3:]]


def retype(frames: Frames, old: str, new: str) -> Frames:
    """The same message with a tensor's dtype renamed in the header (its bytes untouched)."""
    return edit_header(frames, f'"{old}"'.encode(), f'"{new}"'.encode())


def advert(identity: Any, wid: str, round_id: int, c_pk: bytes | None = None,
           s_pk: bytes | None = None) -> Frames:
    """ADVERTISE_KEYS with fresh (or given) keys, validly signed with ``identity``."""
    c_pk = c_pk if c_pk is not None else generate_x25519()[1]
    s_pk = s_pk if s_pk is not None else generate_x25519()[1]
    commit = COMMIT
    signature = sign(identity, advertise_message(round_id, wid, c_pk, s_pk, commit))
    return frames_of(AdvertiseKeys(wid, round_id, c_pk, s_pk, commit, signature))


#: A commitment to some self-mask seed (forged adverts commit to this; its seed is never used).
COMMIT = bytes(range(32))


def consistency(wid: str, round_id: int, identity: Any) -> Frames:
    """CONSISTENCY_SIGNATURE over a made-up survivor set, validly signed with ``identity``."""
    return frames_of(ConsistencySignature(wid, round_id, sign(identity, b"not the survivor set")))


def advert_raw(rid: int, **tensors: np.ndarray) -> Frames:
    return raw(Kind.ADVERTISE_KEYS, {"worker_id": "w0", "round_id": rid}, tensors)


def share_keys(wid: str, round_id: int, recipients: Sequence[str]) -> Frames:
    """SHARE_KEYS with noise for ciphertexts (the broker cannot open them anyway)."""
    return frames_of(ShareKeys(wid, round_id, tuple(recipients), u8(len(recipients), CIPHERTEXT_BYTES)))


def share_keys_raw(rid: int, recipients: Sequence[str], ciphertexts: np.ndarray) -> Frames:
    return raw(Kind.SHARE_KEYS, {"worker_id": "w0", "round_id": rid, "recipients": list(recipients)},
               {"ciphertexts": ciphertexts})


def masked(wid: str, round_id: int, vector: np.ndarray) -> Frames:
    return frames_of(MaskedInput(wid, round_id, vector, 0.5))


def unmask(wid: str, round_id: int, b_owners: Sequence[str] = (), s_owners: Sequence[str] = (),
           width: int = SHARE_BYTES) -> Frames:
    """UNMASK_SHARES whose shares are all zero (a field element; ``width`` may be wrong)."""
    header = {"worker_id": wid, "round_id": round_id, "b_owners": list(b_owners), "s_owners": list(s_owners)}
    return raw(Kind.UNMASK_SHARES, header,
               {"b_shares": u8(len(b_owners), width, 0), "s_shares": u8(len(s_owners), width, 0)})


def answers(wid: str, round_id: int, identity: Any, length: int, wire: Any,
            recipients: Sequence[str]) -> dict[str, Frames]:
    """One well-formed answer of each stage for ``wid`` (``identity`` signing its keys): what that stage
    would accept from it. Sent in another stage, for another round or from another connection, each
    must be refused."""
    return {"advertise": advert(identity, wid, round_id),
            "share_keys": share_keys(wid, round_id, recipients),
            "masked_input": masked(wid, round_id, np.arange(length, dtype=wire)),
            "consistency": consistency(wid, round_id, identity),
            "unmask": unmask(wid, round_id)}


def answers_in(h: Harness, wid: str, round_id: int, identity: Any) -> dict[str, Frames]:
    recipients = h.neighbours(wid) if wid in h.machine.identities else ("w1",)
    return answers(wid, round_id, identity, h.params.vector_length, h.params.wire_dtype, recipients)


def random_frames(seed: int) -> list[Frames]:
    rng = random.Random(seed)
    kinds = [k.value.encode() for k in Kind]
    deep = json.dumps({"worker_id": "w0", "round_id": 1, "x": [[[[[[[[[[]]]]]]]]]]}).encode()
    orphan = (b'{"worker_id": "w0", "round_id": 1, "recipients": ["w1"], "tensors": [{"name": '
              b'"ciphertexts", "dtype": "uint8", "shape": [1, 164], "chunks": 1}]}')  # its frame is missing
    return [
        [],
        [b"FL1"],
        [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 7))],
        [b"FL2", b"ADVERTISE_KEYS", b"{}"],
        [b"FL1", b"NOT_A_KIND", b"{}"],
        [b"FL1", rng.choice(kinds), rng.randbytes(30)],
        [b"FL1", b"MASKED_INPUT", b"[1, 2]"],
        [b"FL1", b"MASKED_INPUT", b'{"tensors": 5}'],
        [b"FL1", b"UNMASK_SHARES", b"\xff\xfe{}"],
        [b"FL1", b"SHARE_KEYS", orphan],
        [b"FL1", b"ADVERTISE_KEYS", deep, rng.randbytes(32)],
        [b"FL1", b"HEARTBEAT", b'{"worker_id": "w0"}', b"tensor frames on a kind without tensors"],
    ]


def catalogue(h: Harness) -> list[Case]:
    """Messages from w0's connection that no stage may accept."""
    rid, length, wire = h.rid, h.params.vector_length, h.params.wire_dtype
    other_wire = np.uint16 if wire == np.uint32 else np.uint32
    nbrs = h.neighbours()
    identity = h.workers[MEMBER].identity
    c_pk, s_pk = generate_x25519()[1], generate_x25519()[1]
    sig = sign(identity, advertise_message(rid, "w0", c_pk, s_pk, COMMIT))
    cases: list[Case] = [(f"random frames {i}", f, UNDECODABLE) for i, f in enumerate(random_frames(rid))]
    # Another round (a replay, or a guess at the next one); another worker's id on w0's connection.
    for stage, frames in answers_in(h, "w0", rid + 1, identity).items():
        cases.append((f"{stage} for the next round", frames, WRONG_STAGE))
    for stage, frames in answers_in(h, "w0", 2**40, identity).items():
        cases.append((f"{stage} for round 2^40", frames, WRONG_STAGE))
    for wid in ("w1", "x0", "nobody"):
        for stage, frames in answers_in(h, wid, rid, identity).items():
            cases.append((f"{stage} claiming to be {wid}", frames, WRONG_WORKER))
    cases.append(("heartbeat claiming to be w1", frames_of(Heartbeat("w1")), WRONG_WORKER))
    keys = {"c_pk": blob(c_pk), "s_pk": blob(s_pk), "b_commit": blob(COMMIT), "signature": blob(sig)}
    vector = np.zeros(length, wire)
    cases += [(label, frames, UNDECODABLE) for label, frames in [
        ("advertise with an id that is not one", edit_header(advert_raw(rid, **keys), b'"w0"', b'"../w0"')),
        ("advertise with round_id a string", edit_header(advert_raw(rid, **keys), b'"round_id":', b'"x":')),
        # Truncated and oversized blobs.
        ("c_pk of 31 bytes", advert_raw(rid, **{**keys, "c_pk": blob(c_pk[:31])})),
        ("s_pk of 33 bytes", advert_raw(rid, **{**keys, "s_pk": blob(s_pk + b"\0")})),
        ("signature of 63 bytes", advert_raw(rid, **{**keys, "signature": blob(sig[:63])})),
        ("keys as uint32 words", advert_raw(rid, **{**keys, "c_pk": blob(c_pk, np.uint32),
                                                   "s_pk": blob(s_pk, np.uint32)})),
        ("advertise without s_pk", advert_raw(rid, c_pk=blob(c_pk), b_commit=blob(COMMIT), signature=blob(sig))),
        ("advertise without b_commit", advert_raw(rid, c_pk=blob(c_pk), s_pk=blob(s_pk), signature=blob(sig))),
        ("signature of 65 bytes", raw(Kind.CONSISTENCY_SIGNATURE, {"worker_id": "w0", "round_id": rid},
                                      {"signature": u8(1, 65).ravel()})),
        ("ciphertexts one byte short", share_keys_raw(rid, nbrs, u8(len(nbrs), CIPHERTEXT_BYTES - 1))),
        ("ciphertexts one byte long", share_keys_raw(rid, nbrs, u8(len(nbrs), CIPHERTEXT_BYTES + 1))),
        ("more ciphertexts than recipients", share_keys_raw(rid, nbrs, u8(len(nbrs) + 1, CIPHERTEXT_BYTES))),
        ("ciphertexts flattened", share_keys_raw(rid, nbrs, u8(len(nbrs), CIPHERTEXT_BYTES).ravel())),
        ("a recipient twice", share_keys_raw(rid, [nbrs[0], *nbrs], u8(len(nbrs) + 1, CIPHERTEXT_BYTES))),
        ("masked float32", masked("w0", rid, np.zeros(length, np.float32))),
        ("masked int32", masked("w0", rid, np.zeros(length, np.int32))),
        ("masked uint8", masked("w0", rid, np.zeros(length, np.uint8))),
        ("masked as a row", masked("w0", rid, vector[None, :])),
        ("masked scalar", masked("w0", rid, vector[0])),
        ("masked uint64 (not a wire dtype)", retype(masked("w0", rid, np.zeros(2 * length, np.uint32)),
                                                    "uint32", "uint64")),
        ("masked float32 NaN", retype(masked("w0", rid, np.full(length, np.nan, np.float32).view(np.uint32)),
                                      "uint32", "float32")),
        ("masked without its vector", raw(Kind.MASKED_INPUT, {"worker_id": "w0", "round_id": rid,
                                                              "train_s": 0.1})),
        ("masked with train_s 1e400", edit_header(masked("w0", rid, vector), b'"train_s":0.5',
                                                  b'"train_s":1e400')),
        ("65-byte shares", unmask("w0", rid, nbrs[:1], width=SHARE_BYTES - 1)),
        ("67-byte shares", unmask("w0", rid, nbrs[:1], width=SHARE_BYTES + 1)),
        ("an owner in both share lists", unmask("w0", rid, nbrs[:1], nbrs[:1])),
        ("an owner twice", unmask("w0", rid, [nbrs[0], nbrs[0]])),
        ("owners without share rows", raw(Kind.UNMASK_SHARES, {"worker_id": "w0", "round_id": rid,
                                                               "b_owners": list(nbrs), "s_owners": []},
                                          {"b_shares": u8(0, SHARE_BYTES), "s_shares": u8(0, SHARE_BYTES)})),
    ]]
    # Kinds only the broker sends.
    cases += [(label, frames, frozenset({"wrong_direction"})) for label, frames in [
        ("a ROSTER", frames_of(Roster(rid, ("w0", "w1"), u8(2, 32), u8(2, 32), u8(2, 32), u8(2, 64), u8(2, 32)))),
        ("a CONSISTENCY_CHECK", frames_of(ConsistencyCheck(rid, ("w0", "w1"), b"\1" * 32))),
        ("a SHARES", frames_of(Shares(rid, ("w1",), u8(1, CIPHERTEXT_BYTES)))),
        ("an UNMASK_REQUEST", frames_of(UnmaskRequest(rid, ("w0", "w1", "w2"), (), b"\1" * 32))),
        ("a TASK", frames_of(Task(rid, "train", {}, SECURE_WEIGHTS, 0, 1, 1.0))),
    ]]
    # Well-formed, but against the protocol in every stage: the state machine refuses them.
    cases += [(label, frames, SECAGG) for label, frames in [
        ("advertise signed by a stranger's key", advert(h.outsider_identity, "w0", rid)),
        ("advertise signed for another id", edit_header(advert(identity, "w1", rid), b'"w1"', b'"w0"')),
        ("advertise with c_pk == s_pk, signed by w0", advert(identity, "w0", rid, c_pk, c_pk)),
        ("shares for an outsider", share_keys("w0", rid, ["x0"])),
        ("shares for itself", share_keys("w0", rid, ["w0"])),
        ("shares for no one", share_keys("w0", rid, [])),
        ("shares for the neighbours in reverse", share_keys("w0", rid, nbrs[::-1])),
        ("shares for all but one neighbour", share_keys("w0", rid, nbrs[:-1])),
        ("shares for the neighbours and an outsider", share_keys("w0", rid, [*nbrs, "x0"])),
        (f"masked {np.dtype(other_wire).name} in a {np.dtype(wire).name} round",
         masked("w0", rid, np.zeros(length, other_wire))),
        ("masked one coordinate short", masked("w0", rid, vector[:-1])),
        ("masked one coordinate long", masked("w0", rid, np.zeros(length + 1, wire))),
        ("masked empty", masked("w0", rid, vector[:0])),
        ("unmask shares of an outsider", unmask("w0", rid, ["x0"])),
        ("unmask shares of itself", unmask("w0", rid, ["w0"])),
        ("unmask mask-key shares of a survivor", unmask("w0", rid, (), nbrs[:1])),
    ]]
    return cases


def out_of_stage(h: Harness, stage: str) -> list[Case]:
    """w0's well-formed answers of the *other* stages: each would be kept in its own stage."""
    mine = answers_in(h, "w0", h.rid, h.workers[MEMBER].identity)
    return [(f"{other} during {stage}", frames, SECAGG) for other, frames in mine.items() if other != stage]


def inject_everything(h: Harness, stage: str) -> int:
    """Every bad message, from w0's connection, from the registered outsider and from a stranger.
    Returns how many were refused."""
    assert h.machine.stage == stage and "w0" in h.machine.pending  # w0 has not answered yet
    sent = 0
    for label, frames, codes in catalogue(h) + out_of_stage(h, stage):
        h.refused(MEMBER, frames, codes, label)
        # The outsider is in no bucket: its secure messages are for a round it is not in; those naming
        # w0 come from the wrong connection.
        h.refused(OUTSIDER, frames, codes | {"wrong_worker", "wrong_stage"}, f"outsider: {label}")
        # A connection that never said HELLO does not even get its tensors decoded.
        h.refused(GHOST, frames, UNDECODABLE | {"unknown_worker"}, f"ghost: {label}")
        sent += 3
    for other, frames in answers_in(h, "x0", h.rid, h.outsider_identity).items():
        h.refused(OUTSIDER, frames, WRONG_STAGE, f"outsider's own {other}")
        sent += 1
    # An ERROR about another round from anyone, one about this round from a worker outside it, and a BYE
    # from a stranger are logged and otherwise ignored. (A member's ERROR about this round makes it a
    # dropout: test_secure_coordinator covers that.)
    for route in (MEMBER, OUTSIDER, GHOST):
        h.ignored(route, frames_of(Error("secagg_refused", "fuzz", h.rid + 7)), f"ERROR from {route!r}")
    for route in (OUTSIDER, GHOST):
        h.ignored(route, frames_of(Error("secagg_refused", "fuzz", h.rid)), f"this round's ERROR from {route!r}")
    h.ignored(GHOST, frames_of(Bye("w0", "fuzz")), "BYE naming w0 from a stranger")
    return sent


# --------------------------------------------------------------------------------------------- tests


def test_the_unfuzzed_round_is_exact_and_then_refuses_late_messages() -> None:
    """The reference every fuzzed round is compared with: all five survive, with the weighted mean.
    Once training is over, w0's well-formed answers of the finished round are refused too."""
    workers = cohort()
    h = Harness(workers)
    h.run()
    assert_exact(h, workers, [w.wid for w in workers])
    assert h.c.refused == 0 and not any(w.refusals for w in workers)
    assert h.c.done and h.c.round is None
    for stage, frames in answers_in(h, "w0", h.rid, workers[0].identity).items():
        h.refused(MEMBER, frames, WRONG_STAGE, f"{stage} after training finished")


@pytest.mark.parametrize("stage", STAGES)
def test_bad_messages_at_each_stage_are_refused_and_the_round_stays_exact(stage: str) -> None:
    """The whole catalogue, from w0, the outsider and a stranger, before anyone answered ``stage``."""
    workers = cohort()
    h = Harness(workers)
    sent: list[int] = []

    def fuzz(h: Harness, now: str) -> None:
        if now == stage:
            sent.append(inject_everything(h, stage))

    h.run(on_stage=fuzz)
    assert sent and sent[0] > 200
    assert h.c.refused == sent[0]  # one ERROR each, and no honest answer was refused afterwards
    assert not any(w.refusals for w in workers)
    assert_exact(h, workers, [w.wid for w in workers])
    assert h.c.history[-1].dropped == ()


@pytest.mark.parametrize("stage", STAGES)
def test_duplicates_and_copies_after_answering_are_refused(stage: str) -> None:
    """Once w0 answered a stage (the others have not yet), a second answer, an exact copy or another
    valid one (freshly signed keys, another masked vector...), is refused and does not replace the
    first; w0's answer sent from other connections is refused too."""
    workers = cohort()
    h = Harness(workers)
    checked: list[str] = []

    def again(h: Harness, now: str, worker: Worker) -> None:
        if now != stage or worker.wid != "w0" or checked:
            return
        assert h.machine.stage == stage and h.machine.pending == {"w1", "w2", "w3", "w4"}
        honest = [frames for route, _, frames in h.log if route == MEMBER][-1]
        h.refused(MEMBER, honest, SECAGG, "exact duplicate")
        h.refused(MEMBER, answers_in(h, "w0", h.rid, worker.identity)[stage], SECAGG, "a different answer")
        h.refused(OTHER, honest, WRONG_WORKER, "w0's answer from w1's connection")
        h.refused(OUTSIDER, honest, WRONG_WORKER, "w0's answer from the outsider")
        h.refused(GHOST, honest, {"unknown_worker"}, "w0's answer from a stranger")
        checked.append(stage)

    h.run(after_answer=again)
    assert checked == [stage]
    assert_exact(h, workers, [w.wid for w in workers])


def test_replays_of_the_previous_round_are_refused_at_every_stage() -> None:
    workers = cohort()
    h = Harness(workers, secure_config(len(workers), rounds=2))
    replayed: list[str] = []

    def replay(h: Harness, stage: str) -> None:
        if h.rid != 2:
            return
        old = [(route, frames) for route, rid, frames in h.log if rid == 1]
        assert len(old) == len(STAGES) * len(workers)
        for route, frames in old:
            h.refused(route, frames, WRONG_STAGE, f"round 1 {frames[1]!r}")
        replayed.append(stage)

    h.run(rounds=2, on_stage=replay)
    assert replayed == list(STAGES)
    assert [r.status for r in h.c.history] == ["complete", "complete"]
    assert_exact(h, workers, [w.wid for w in workers], rounds=2)


def test_a_sixteen_bit_round_refuses_thirty_two_bit_inputs() -> None:
    """Under q8 the round sums uint16 words: a uint32 vector (what a 32-bit round wants) is refused."""
    workers = [Worker(f"w{i}", 10, 0.1 * (i + 1)) for i in range(4)]
    h = Harness(workers, secure_config(4, compression="q8", clip=2.0))
    codes: list[str] = []

    def fuzz(h: Harness, stage: str) -> None:
        if stage != "masked_input":
            return
        assert h.params.ring_bits == 16
        length = h.params.vector_length
        codes.append(h.refused(MEMBER, masked("w0", h.rid, np.zeros(length, np.uint32)), SECAGG))
        codes.append(h.refused(MEMBER, masked("w0", h.rid, np.zeros(length + 1, np.uint16)), SECAGG))
        codes.append(h.refused(MEMBER, masked("w0", h.rid, np.zeros(length, np.float32)), UNDECODABLE))
        inject_everything(h, stage)

    h.run(on_stage=fuzz)
    assert codes == ["secagg", "secagg", "malformed"]
    record = h.c.history[-1]
    assert record.status == "complete" and len(record.survivors) == 4, record.error
    # Under 16-bit sums every worker weighs 1: the unweighted mean of 0.1 .. 0.4, on q8's grid.
    np.testing.assert_allclose(h.c.weights["w"], 0.25, atol=2e-3)


def test_with_a_dropout_unmask_shares_of_the_wrong_kind_are_refused() -> None:
    """w4 leaves when its SHARES arrive (it had shared keys), so the unmask stage asks the survivors for
    w4's mask-key shares and for each other's self-mask shares, never both for one worker. Shares of
    the wrong kind, from the departed connection, or from w4 once it is back (dropped for this round)
    are refused; the other four finish exactly."""
    workers = cohort()
    last = workers[-1]
    w4 = workers[-1] = Vanishing(last.wid, last.samples, float(last.update["b"][0]), Shares)
    h = Harness(workers)
    done: list[int] = []

    def fuzz(h: Harness, stage: str) -> None:
        if stage != "unmask":
            return
        rid = h.rid
        assert set(h.machine._masked) == {"w0", "w1", "w2", "w3"} and "w4" in h.machine.dropped
        h.refused(MEMBER, unmask("w0", rid, ["w4"]), SECAGG, "self-mask share of a dropped worker")
        h.refused(MEMBER, unmask("w0", rid, (), ["w1"]), SECAGG, "mask-key share of a survivor")
        h.refused(MEMBER, unmask("w0", rid, ["w1"], ["w4", "w1"]), UNDECODABLE, "both shares of w1")
        h.refused(MEMBER, unmask("w0", rid, (), ["w4"], width=SHARE_BYTES - 1), UNDECODABLE, "short share")
        h.refused(b"w4", unmask("w4", rid, ["w0"]), {"unknown_worker"}, "from the departed connection")
        # w4 comes back on a new connection (same identity key) and sends what it never sent.
        assert h.inject(b"w4", frames_of(w4.hello))
        vector = np.zeros(h.params.vector_length, h.params.wire_dtype)
        h.refused(b"w4", masked("w4", rid, vector), SECAGG, "a late masked input")
        h.refused(b"w4", unmask("w4", rid, ["w0"]), SECAGG, "unmask shares from a dropped worker")
        h.refused(b"w4", advert(w4.identity, "w4", rid), SECAGG, "advertising again")
        done.append(inject_everything(h, stage))

    h.run(on_stage=fuzz)
    assert done
    assert_exact(h, workers, ["w0", "w1", "w2", "w3"])
    assert h.c.history[-1].dropped == ("w4",)


def test_bad_messages_in_a_bucketed_round_are_refused_in_each_bucket() -> None:
    """Two buckets of three, each with its own state machine and stage: the catalogue at every stage of
    w0's bucket, plus shares for and of a member of the other bucket (never w0's neighbour)."""
    workers = cohort(6)
    h = Harness(workers, secure_config(6, bucket_size=3))
    stages: list[str] = []

    def fuzz(h: Harness, stage: str, worker: Worker, frames: Frames) -> None:
        if worker.wid != "w0" or stage in stages:
            return
        assert h.c.round is not None and h.c.round.secure is not None
        bucket_of = h.c.round.secure.bucket_of
        stranger = next(w for w in sorted(bucket_of) if bucket_of[w] != bucket_of["w0"])
        inject_everything(h, stage)
        h.refused(MEMBER, share_keys("w0", h.rid, [stranger]), SECAGG, "shares for the other bucket")
        h.refused(MEMBER, unmask("w0", h.rid, [stranger]), SECAGG, "unmask shares of the other bucket")
        stages.append(stage)

    h.run(before_answer=fuzz)
    assert stages == list(STAGES)
    assert len(h._secure.machines) == 2
    assert_exact(h, workers, [w.wid for w in workers])


def test_secure_messages_outside_a_secure_round_are_refused() -> None:
    """Before any round, and during a plain round, secure-aggregation messages are out of place."""
    workers = cohort(3)
    plain = FederatedConfig(num_clients=3, clients_per_round=3, num_rounds=1, min_clients=2,
                            broker=BrokerConfig(heartbeat_interval_s=100.0, heartbeat_timeout_s=1000.0))
    c = Coordinator(plain, SECURE_WEIGHTS)
    for w in workers[:2]:
        c.handle(w.wid.encode(), w.hello.to_frames(), 0.0)
    c.tick(0.0)
    assert c.round is None  # two of three: still waiting
    mine = answers("w0", 1, workers[0].identity, 10, np.uint32, ("w1", "w2"))
    for stage, frames in mine.items():
        assert_refused(c, MEMBER, frames, WRONG_STAGE, 0.1, f"{stage} before any round")
    c.handle(b"w2", workers[2].hello.to_frames(), 0.2)
    c.tick(0.2)
    assert c.round is not None and c.round.secure is None
    for stage, frames in mine.items():
        assert_refused(c, MEMBER, frames, WRONG_STAGE, 0.3, f"{stage} in a plain round")


@given(data=st.data())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_frames_from_a_member_are_refused_without_a_trace(data: st.DataObject) -> None:
    """Random frame lists, some behind the right version and a secure-aggregation kind with a random
    JSON header, sent by w0 at a random stage: each is refused without changing any state, and the
    round stays exact."""
    stage = data.draw(st.sampled_from(STAGES), label="stage")
    kinds = [k.value.encode() for k in (Kind.ADVERTISE_KEYS, Kind.SHARE_KEYS, Kind.MASKED_INPUT,
                                        Kind.UNMASK_SHARES)]
    descriptor = {"name": "masked", "dtype": "uint32", "shape": [3], "chunks": 1}
    header = st.one_of(st.binary(max_size=60), st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(st.sampled_from(["worker_id", "round_id", "tensors", "recipients", "b_owners",
                                         "train_s"]),
                        st.one_of(st.integers(-2, 2**64), st.text(max_size=6),
                                  st.lists(st.integers(0, 3), max_size=3), st.just([descriptor])),
                        max_size=5)))
    messages = data.draw(st.lists(st.one_of(
        st.lists(st.binary(max_size=40), max_size=6),
        st.tuples(st.just(b"FL1"), st.sampled_from(kinds), header,
                  st.lists(st.binary(max_size=24), max_size=3)).map(lambda t: [t[0], t[1], t[2], *t[3]]),
    ), min_size=1, max_size=4), label="messages")
    workers = cohort()
    h = Harness(workers)

    def fuzz(h: Harness, now: str) -> None:
        if now == stage:
            for frames in messages:
                codes = UNDECODABLE | SECAGG | WRONG_STAGE | WRONG_WORKER
                h.refused(MEMBER, frames, codes, repr(frames)[:80])

    h.run(on_stage=fuzz)
    assert_exact(h, workers, [w.wid for w in workers])


def _tamper_then_answer(stage: str, spoil: Callable[[Frames], Frames]) -> tuple[Harness, list[Worker], bool]:
    """Run a round in which w0 first sends ``spoil(its real answer)`` of ``stage``, then the real one.
    The spoiled copy must not make ``handle`` raise; if it is refused, the state must be unchanged.
    Returns the harness, the workers, and whether the copy was refused or ignored (state unchanged)."""
    workers = cohort()
    h = Harness(workers)
    outcome: list[bool] = []

    def tamper(h: Harness, now: str, worker: Worker, frames: Frames) -> None:
        if now != stage or worker.wid != "w0" or outcome:
            return
        before = state_of(h.c)
        replies = h.inject(MEMBER, spoil(frames))
        unchanged = state_of(h.c) == before
        if replies:
            (reply,) = replies
            assert isinstance(reply, Error), reply
            assert unchanged, f"refused ({reply.code}) but the state changed"
        outcome.append(unchanged)

    h.run(before_answer=tamper)
    assert outcome
    return h, workers, outcome[0]


#: A byte-level mutation: (which frame, what to do, position, xor mask or appended byte). Tensor
#: frames come up most often: a flipped ciphertext or share byte still decodes, and there the broker
#: relies on the protocol rather than on validation.
Mutation = tuple[str, str, int, int]
MUTATIONS = st.tuples(st.sampled_from(["version", "kind", "header", "header", "tensor", "tensor", "tensor"]),
                      st.sampled_from(["flip", "flip", "cut", "drop", "append"]),
                      st.integers(0, 100_000), st.integers(1, 255))


def mutate(frames: Frames, mutation: Mutation) -> Frames:
    """``frames`` with one frame changed: a byte flipped, cut short, bytes appended, or the frame left
    out. Never a no-op (an empty frame, e.g. the shares of no one, gets bytes appended instead)."""
    target, how, position, mask = mutation
    out = list(frames)
    tensors = len(out) - 3
    i = {"version": 0, "kind": 1, "header": 2}.get(target, 3 + position % tensors if tensors else 2)
    if how == "drop":
        return out[:i] + out[i + 1:]
    frame = bytearray(out[i])
    if how == "flip" and frame:
        frame[position % len(frame)] ^= mask
    elif how == "cut" and frame:
        del frame[position % len(frame):]
    else:
        frame += bytes([mask]) * (1 + position % 8)
    out[i] = bytes(frame)
    assert out != frames
    return out


@given(stage=st.sampled_from(STAGES), mutation=MUTATIONS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_answers_never_crash_the_broker_or_skew_the_sum(stage: str, mutation: Mutation) -> None:
    """w0 sends a byte-mutated copy of its valid answer just before the real one.

    Refused (or ignored): nothing changed, so all five survive and the sum is exact. Still well-formed
    (a flipped ciphertext or share byte, another train_s): the broker cannot tell it from an honest
    answer and keeps it (the real one is then refused as a duplicate), and the outcome must be sound.
    Observed: a flipped ciphertext makes its recipient refuse its SHARES and drop out (four finish); a
    flipped share makes the reconstruction find the shares inconsistent (the round aborts).

    A flipped byte of the masked vector is left out: that is w0 choosing another input, not a
    malformed message, and no broker can check it (see the tests of a member's own input below)."""
    assume(not (stage == "masked_input" and mutation[:2] == ("tensor", "flip")))
    h, workers, unchanged = _tamper_then_answer(stage, lambda frames: mutate(frames, mutation))
    if unchanged:
        assert_exact(h, workers, [w.wid for w in workers])
        assert not any(w.refusals for w in workers)
    else:
        assert_sound(h, workers)


#: JSON values at the edges of what header validation must survive.
EDGES: list[Any] = [0, 1, -1, 2**31, 2**62, 2**63, 2**64, 10**400, 1e308, -1e308, 5e-324, "", "w0", "w1",
                    "x0", "uint8", "uint16", "uint32", "float32", "x" * 300, [], {}, None, True, ["w1"],
                    ["w0", "w0"], [0], [164], [-1]]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(EDGES)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def edit_field(header: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """A copy of a decoded header with one field, or one field of a tensor descriptor, set to another
    JSON value, deleted, or (a list) permuted."""
    edited: dict[str, Any] = json.loads(json.dumps(header))
    fields = sorted(k for k in edited if k != "tensors")
    where = data.draw(st.sampled_from([*fields, "tensors", "a descriptor", "a new field"]), label="where")
    target, key = edited, where
    if where == "a descriptor" and edited["tensors"]:
        target = edited["tensors"][data.draw(st.integers(0, len(edited["tensors"]) - 1), label="descriptor")]
        key = data.draw(st.sampled_from(["name", "dtype", "shape", "chunks"]), label="descriptor field")
    elif where in ("a descriptor", "a new field"):
        key = data.draw(st.text(max_size=8), label="new field")
    how = data.draw(st.sampled_from(["set", "delete", "permute"]), label="how")
    if how == "delete":
        target.pop(key, None)
    elif how == "permute" and isinstance(target.get(key), list) and len(target[key]) > 1:
        target[key] = data.draw(st.permutations(target[key]), label="permutation")
    else:
        target[key] = data.draw(JSON, label="value")
    return edited


@given(stage=st.sampled_from(STAGES), data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_edited_header_fields_never_crash_the_broker_or_skew_the_sum(stage: str, data: st.DataObject) -> None:
    """The same one level up: w0's valid answer with one header field (or tensor descriptor field)
    replaced by an arbitrary JSON value, deleted, or permuted (e.g. UNMASK_SHARES owners no longer in
    the order of their share rows), just before the real answer. Observed when kept: an unknown field
    or another train_s changes nothing; permuted owners make the shares inconsistent (round aborts)."""

    def spoil(frames: Frames) -> Frames:
        header = edit_field(json.loads(frames[2]), data)
        return [frames[0], frames[1], json.dumps(header).encode(), *frames[3:]]

    h, workers, unchanged = _tamper_then_answer(stage, spoil)
    if unchanged:
        assert_exact(h, workers, [w.wid for w in workers])
    else:
        assert_sound(h, workers)


# ------------------------------------ well-formed but bogus contents: what the broker cannot see


def _slip_in(stage: str, make: Callable[[Harness, Worker, Frames], Frames]) -> tuple[Harness, list[Worker],
                                                                                    list[Any]]:
    """Run a round in which w0's connection sends ``make(h, w0, its real answer)`` just before its real
    answer of ``stage``; returns the harness, the workers and the broker's replies to that message."""
    workers = cohort()
    h = Harness(workers)
    replies: list[list[Any]] = []

    def slip(h: Harness, now: str, worker: Worker, frames: Frames) -> None:
        if now == stage and worker.wid == "w0" and not replies:
            replies.append(h.inject(MEMBER, make(h, worker, frames)))

    h.run(before_answer=slip)
    assert replies
    return h, workers, replies[0]


def _survivor_shares(fill: int) -> Callable[[Harness, Worker, Frames], Frames]:
    """UNMASK_SHARES for exactly the owners w0 holds, every share byte ``fill``."""

    def make(h: Harness, w: Worker, honest: Frames) -> Frames:
        owners = tuple(v for v in h.neighbours() if v in h.machine._masked)
        return frames_of(UnmaskShares("w0", h.rid, owners, u8(len(owners), SHARE_BYTES, fill), (),
                                      u8(0, SHARE_BYTES)))

    return make


def _shifted(coordinate: int, by: int) -> Callable[[Harness, Worker, Frames], Frames]:
    """w0's real masked input with ``by`` added (mod 2^32) to one coordinate: w0 lying about its input."""

    def make(h: Harness, w: Worker, honest: Frames) -> Frames:
        msg = decode_message(honest)
        assert isinstance(msg, MaskedInput)
        vector = msg.masked.copy()
        vector[coordinate] = (int(vector[coordinate]) + by) % 2**32
        return frames_of(MaskedInput(msg.worker_id, msg.round_id, vector, msg.train_s))

    return make


def test_a_members_other_signed_keys_take_its_place_and_it_drops_out() -> None:
    # Only w0 can sign keys for w0, so this is w0 contradicting itself: the broker keeps the first
    # advert and refuses the second. w0's own machine then finds the roster misrepresents its keys,
    # refuses to share, and is dropped at share_keys; the other four finish exactly.
    h, workers, replies = _slip_in("advertise", lambda h, w, f: advert(w.identity, "w0", h.rid))
    assert replies == []
    assert any("misrepresents" in r for r in workers[0].refusals)
    assert_exact(h, workers, ["w1", "w2", "w3", "w4"])
    assert h.c.history[-1].dropped == ("w0",)


def test_garbage_ciphertexts_from_a_member_abort_the_round_cleanly() -> None:
    # AES-GCM ciphertexts only their recipient can open: the broker routes them. Every neighbour of w0
    # fails to decrypt, refuses its SHARES (it cannot tell whether w0 or the broker lied) and leaves;
    # fewer than the threshold send masked inputs and the round aborts with the model unchanged.
    h, workers, replies = _slip_in("share_keys", lambda h, w, f: share_keys("w0", h.rid, h.neighbours()))
    assert replies == []
    assert all(any("Shares" in r for r in w.refusals) for w in workers[1:])
    record = h.c.history[-1]
    assert record.status == "failed" and "too few masked inputs" in (record.error or ""), record.error
    assert_sound(h, workers)


def test_a_member_withholding_its_unmask_shares_does_not_stop_the_round() -> None:
    # An UNMASK_SHARES revealing nothing is legal (a subset of what w0 holds): each secret still has
    # threshold holders among the other four, so the sum is rebuilt exactly, w0's input included.
    h, workers, replies = _slip_in("unmask", lambda h, w, f: unmask("w0", h.rid))
    assert replies == []
    assert_exact(h, workers, [w.wid for w in workers])


def test_wrong_unmask_shares_are_outvoted_and_the_sum_stays_exact() -> None:
    # Field elements, but not the shares w0 holds. Every rebuilt self-mask seed is checked against the
    # commitment its owner signed, so the broker tries the other holders' shares (more than the
    # threshold arrived) and finds the committed seeds: the sum is exact, never skewed. (With exactly
    # the threshold of shares the round aborts instead: tests/crypto/test_malicious_broker.py.)
    h, workers, replies = _slip_in("unmask", _survivor_shares(1))
    assert replies == []
    assert_exact(h, workers, [w.wid for w in workers])


def test_a_member_pushing_its_own_input_past_the_clip_fails_the_round() -> None:
    # A masked vector is w0's input plus masks: the broker can only check the decoded sum. A model
    # coordinate pushed far out gives a mean beyond the clip bound: the round fails, the model is kept.
    h, workers, replies = _slip_in("masked_input", _shifted(0, 2**30))
    assert replies == []
    record = h.c.history[-1]
    assert record.status == "failed" and "clip bound" in (record.error or ""), record.error
    assert_sound(h, workers)


# ------------------------------------------------------------------------- bugs found here, now fixed


def test_a_member_making_the_summed_weight_negative_fails_the_round_cleanly() -> None:
    # The weight is the last coordinate. w0 adds 2^31 to it: the unmasked sum decodes to a negative
    # total weight. That should fail the round with the model unchanged, not raise out of handle().
    h, workers, _ = _slip_in("masked_input", _shifted(-1, 2**31))
    assert h.c.history[-1].status == "failed"
    assert_sound(h, workers)


def test_unmask_share_outside_the_field_is_refused() -> None:
    # A 66-byte row of 0xff is not a share (shamir.from_bytes refuses it), so the message is malformed
    # and should be refused on arrival, letting w0's real answer through and the round finish.
    h, workers, replies = _slip_in("unmask", _survivor_shares(0xFF))
    assert_sound(h, workers)  # holds today: the round aborts and the model is unchanged
    assert [type(r) for r in replies] == [Error]
    assert_exact(h, workers, [w.wid for w in workers])


def test_advertised_low_order_key_is_refused() -> None:
    # Signed by w0, so only w0 can send it; but no key exchange with it is possible, which the broker
    # could see with one X25519 operation. Kept, it reaches every roster, every honest worker refuses
    # the roster, and the round aborts.
    h, workers, replies = _slip_in("advertise",
                                   lambda h, w, f: advert(w.identity, "w0", h.rid, c_pk=bytes(32)))
    assert_sound(h, workers)  # holds today: aborted, the model is unchanged
    assert [type(r) for r in replies] == [Error]
    assert_exact(h, workers, [w.wid for w in workers])

"""How the fuzz corrupts valid messages: ``Mutator`` makes one fuzz message at a time, of a category drawn at
random by weight (from random bytes and broken encodings up to well-formed messages that are wrong: another
worker's id, a past round, the wrong stage or direction, replays, bit flips), for a socket that never said
HELLO (a "raw" socket) or one that did under its own worker id; and the updates a selected hello socket
sends for its round, right in every respect but their tensors. A mutation may still turn out valid
(``oracle.expectation`` says "unsafe"); the driver does not send those.

Everything is drawn from the one ``random.Random`` given, so a seed fixes the sequence of messages for the
same sequence of calls."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from federated.protocol import (
    CIPHERTEXT_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    Bye,
    Error,
    Heartbeat,
    Kind,
    Limits,
    MaskedInput,
    Roster,
    ShareKeys,
    Shares,
    Task,
    UnmaskRequest,
    UnmaskShares,
    Update,
    Welcome,
    encode,
)

__all__ = ["FAR_FUTURE", "Frames", "Mutator", "as_frames"]

#: One ZeroMQ multipart message: its frames, in order.
Frames = list[bytes]
#: Round ids at or above this are never reached: updates for them are always refused.
FAR_FUTURE = 10**6


def as_frames(frames: list[Any]) -> Frames:
    """``frames`` (bytes-like: bytes, memoryview, numpy buffers) as a list of ``bytes``."""
    return [bytes(f) for f in frames]


class Mutator:
    """Makes fuzz messages. ``own`` is the sending socket's worker id (None: a raw socket).

    ``model`` is the job's initial model (tensor name -> array): updates carry its real names and shapes.
    ``honest_ids`` are the honest clients' worker ids, which some messages claim. ``captured`` holds real
    messages from the broker for replays; the driver fills it. Each category is a method ``(own, safe,
    cur) -> Frames``: ``safe`` is the highest round the socket knows to be over for it, ``cur`` the round
    of its last TASK. Nothing here raises for any such arguments.
    """

    def __init__(self, rng: random.Random, model: dict[str, np.ndarray], honest_ids: list[str]) -> None:
        self.rng = rng
        self.model = model
        self.names = list(model)
        self.honest = honest_ids
        self.captured: list[Frames] = []  # real broker messages (TASK, WELCOME, HEARTBEAT) to replay
        nrng = np.random.default_rng(rng.getrandbits(32))
        self.small_update = {n: (nrng.standard_normal(w.shape) * 0.01).astype(np.float32)
                             for n, w in model.items()}
        self.tiny = {"layers.0.weight": np.zeros((2, 2), np.float32)}
        self.big_header = [json.dumps({"worker_id": "x", "round_id": 1, "pad": "a" * n}).encode()
                           for n in (65 * 1024, 80 * 1024, 200 * 1024)]
        self.deep = ("[" * 100_000 + "]" * 100_000).encode()
        self.oversize = b"\0" * (Limits().socket_max_msg_size() + 4096)
        self.bases = [
            as_frames(Heartbeat("x").to_frames()),
            as_frames(Update("x", 1, "train", 10, {"loss": 1.0}, self.tiny).to_frames()),
            as_frames(Update("x", 1, "train", 10, {"loss": 1.0}, self.small_update).to_frames()),
            as_frames(Error("oops", "bad", 1).to_frames()),
            as_frames(MaskedInput("x", 1, np.arange(8, dtype=np.uint32), 0.1).to_frames()),
        ]
        self.categories: list[tuple[str, float, Callable[[str | None, int, int], Frames]]] = [
            ("random_frames", 8, self.random_frames),
            ("truncated", 6, self.truncated),
            ("wrong_version", 4, self.wrong_version),
            ("unknown_kind", 4, self.unknown_kind),
            ("header_not_utf8", 4, self.header_not_utf8),
            ("header_not_object", 4, self.header_not_object),
            ("header_bad_json", 4, self.header_bad_json),
            ("header_over_limit", 0.5, self.header_over_limit),
            ("huge_declared", 4, self.huge_declared),
            ("shape_mismatch", 4, self.shape_mismatch),
            ("chunk_mismatch", 3, self.chunk_mismatch),
            ("bad_dtype", 4, self.bad_dtype),
            ("non_finite", 3, self.non_finite),
            ("too_many_frames", 0.05, self.too_many_frames),
            ("frames_on_plain_kind", 2, self.frames_on_plain_kind),
            ("bad_fields", 8, self.bad_fields),
            ("hello_bad_id", 5, self.hello_bad_id),
            ("wrong_direction", 4, self.wrong_direction),
            ("secagg_in_plain_round", 4, self.secagg),
            ("update_wrong_round", 6, self.update_wrong_round),
            ("update_wrong_stage", 4, self.update_wrong_stage),
            ("update_other_worker", 4, self.update_other_worker),
            ("heartbeat_other_worker", 2, self.heartbeat_other_worker),
            ("replay_captured", 3, self.replay_captured),
            ("bit_flip", 8, self.bit_flip),
            ("error_or_bye", 2, self.error_or_bye),
        ]
        self._names = [c[0] for c in self.categories]
        self._funcs = {c[0]: c[2] for c in self.categories}
        self._weights = [c[1] for c in self.categories]

    def pick(self, own: str | None, safe_past: int, current: int) -> tuple[str, Frames]:
        """A category drawn by weight and one of its messages: (category name, frames)."""
        name = self.rng.choices(self._names, self._weights)[0]
        return name, self._funcs[name](own, safe_past, current)

    # -- helpers
    def _wid(self, own: str | None) -> str:
        return own or self.rng.choice(["x", "fuzz_raw", *self.honest])

    def _update(self, wid: str, round_id: int, stage: str = "train", tensors: dict[str, np.ndarray] | None = None,
                num_samples: int = 10) -> Frames:
        return as_frames(Update(wid, round_id, stage, num_samples, {"loss": 0.5, "accuracy": 0.5},
                                self.small_update if tensors is None else tensors).to_frames())

    # -- categories: (own id or None, highest safe past round, current round) -> frames
    def random_frames(self, own: str | None, safe: int, cur: int) -> Frames:
        """1 to 6 frames of random bytes (0 to 299 each)."""
        r = self.rng
        return [r.randbytes(r.randrange(0, 300)) for _ in range(r.randrange(1, 7))]

    def truncated(self, own: str | None, safe: int, cur: int) -> Frames:
        """A base message cut short: fewer frames, a cut header, or a cut tensor frame."""
        r = self.rng
        frames = list(r.choice(self.bases))
        how = r.randrange(3)
        if how == 0:
            return frames[: r.randrange(1, 3)]
        if how == 1:
            frames[2] = frames[2][: r.randrange(0, len(frames[2]))]
            return frames
        if len(frames) > 3:
            i = r.randrange(3, len(frames))
            frames[i] = frames[i][: r.randrange(0, max(1, len(frames[i])))]
            return frames
        return frames[:2]

    def wrong_version(self, own: str | None, safe: int, cur: int) -> Frames:
        """A base message under a version frame other than ``FL1``."""
        version = self.rng.choice([b"", b"FL0", b"FL2", b"fl1", b"FL1\0", self.rng.randbytes(16), b"FL1" * 50])
        return [version, *self.rng.choice(self.bases)[1:]]

    def unknown_kind(self, own: str | None, safe: int, cur: int) -> Frames:
        """A message of a kind the protocol does not have."""
        kind = self.rng.choice([b"", b"hello", b"UPDATE\0", b"PING", b"X" * 5000, self.rng.randbytes(8)])
        return [b"FL1", kind, json.dumps({"worker_id": self._wid(own)}).encode()]

    def header_not_utf8(self, own: str | None, safe: int, cur: int) -> Frames:
        """A header frame that is not UTF-8."""
        head = self.rng.choice([b"\xff\xfe{}", b'{"worker_id": "\xc3\x28"}', b"\x80" * 10, self.rng.randbytes(64)])
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE", b"HELLO"]), head]

    def header_not_object(self, own: str | None, safe: int, cur: int) -> Frames:
        """A header that is JSON but not an object (or empty)."""
        head = self.rng.choice([b"[]", b"1", b'"s"', b"null", b"true", b'[{"worker_id": "x"}]', b"1.5", b""])
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE", b"HELLO", b"BYE"]), head]

    def header_bad_json(self, own: str | None, safe: int, cur: int) -> Frames:
        """A header the decoder refuses: cut, NaN, Infinity, 1e999, 100,000 deep, 5,000 digits, ...."""
        head = self.rng.choice([
            b"{", b'{"worker_id": NaN}', b'{"round_id": Infinity}', b'{"x": 1e999}', self.deep,
            b'{"round_id": ' + b"9" * 5000 + b"}", b"{'single': 1}", b'{"a": 1,}', b'{"worker_id": "x"} trailing',
        ])
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE", b"HELLO"]), head]

    def header_over_limit(self, own: str | None, safe: int, cur: int) -> Frames:
        """A header of just over 65, 80 or 200 KiB (the limit is 64 KiB)."""
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE"]), self.rng.choice(self.big_header)]

    def huge_declared(self, own: str | None, safe: int, cur: int) -> Frames:
        """An UPDATE declaring tensors far larger (or far more) than its 16 payload bytes."""
        r = self.rng
        shape = r.choice([[2**40], [65536, 65536], [2**31, 2**31, 2**31], [0, 2**70], [1] * 9,
                          [64 * 1024 * 1024 + 1], [16 * 1024 * 1024, 4]])
        desc = {"name": "layers.0.weight", "dtype": "float32", "shape": shape, "chunks": 1}
        if r.random() < 0.3:  # many tensors instead
            descs = [{**desc, "name": f"t{i}", "shape": [1]} for i in range(r.choice([1025, 5000]))]
        else:
            descs = [desc]
        head = {"worker_id": self._wid(own), "round_id": cur, "stage": "train", "num_samples": 1, "metrics": {},
                "tensors": descs}
        return [b"FL1", b"UPDATE", json.dumps(head).encode(), b"\0" * 16]

    def _update_parts(self, own: str | None, round_id: int) -> tuple[dict[str, Any], list[bytes]]:
        frames = self._update(self._wid(own), round_id)
        return json.loads(frames[2]), frames[3:]

    def shape_mismatch(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update one of whose tensor frames is shorter or longer than its shape says."""
        head, payload = self._update_parts(own, cur)
        i = self.rng.randrange(len(payload))
        cut = self.rng.choice([0, 1, len(payload[i]) - 1, len(payload[i]) + 4, len(payload[i]) * 2])
        payload[i] = (payload[i] * 3)[:cut]
        return [b"FL1", b"UPDATE", json.dumps(head).encode(), *payload]

    def chunk_mismatch(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update whose chunk count is bad, or with a tensor frame missing or one too many."""
        head, payload = self._update_parts(own, cur)
        r = self.rng
        how = r.randrange(3)
        if how == 0:
            head["tensors"][0]["chunks"] = r.choice([0, -1, 2, 10**6, True, "1", 1.5])
        elif how == 1:
            payload = payload[:-1]
        else:
            payload = [*payload, b"\0" * 4]
        return [b"FL1", b"UPDATE", json.dumps(head).encode(), *payload]

    def bad_dtype(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update one of whose tensors declares a dtype the protocol refuses."""
        head, payload = self._update_parts(own, cur)
        i = self.rng.randrange(len(payload))
        head["tensors"][i]["dtype"] = self.rng.choice(["float64", "complex64", "object", "", "U8", "<f4", "bool",
                                                       None, 5, ["float32"], "float128", "V4"])
        return [b"FL1", b"UPDATE", json.dumps(head).encode(), *payload]

    def non_finite(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update with one NaN or infinite value."""
        value = self.rng.choice([np.nan, np.inf, -np.inf])
        tensors = {n: w.copy() for n, w in self.small_update.items()}
        name = self.rng.choice(self.names)
        tensors[name].reshape(-1)[self.rng.randrange(tensors[name].size)] = value
        return self._update(self._wid(own), cur, tensors=tensors)

    def too_many_frames(self, own: str | None, safe: int, cur: int) -> Frames:
        """More frames than ``Limits().max_frames`` (1 to 99 over)."""
        n = Limits().max_frames + self.rng.randrange(1, 100)
        return [b"FL1", b"UPDATE", b'{"worker_id": "x"}', *([b""] * n)]

    def frames_on_plain_kind(self, own: str | None, safe: int, cur: int) -> Frames:
        """Tensor frames after a kind that carries none."""
        kind = self.rng.choice([b"HEARTBEAT", b"HELLO", b"BYE", b"ERROR"])
        return [b"FL1", kind, json.dumps({"worker_id": self._wid(own)}).encode(), b"\0" * 8]

    def bad_fields(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update with one field of a wrong type or value, or a required field missing."""
        r = self.rng
        head, payload = self._update_parts(own, cur)
        key = r.choice(["worker_id", "round_id", "stage", "num_samples", "metrics", "compression", "tensors"])
        head[key] = r.choice([None, True, -1, 2**64, 1.5, "1", "", "x" * 300, [], {}, "TRAIN", "a b",
                              {"loss": "high"}, {"loss": None}, {f"m{i}": 1 for i in range(65)}])
        if key == "worker_id" and own is not None and head[key] == own:
            head[key] = None
        if r.random() < 0.5:
            del head[key]
            if key == "compression" or key == "metrics":  # optional fields: make it bad another way
                head["round_id"] = -5
        return [b"FL1", b"UPDATE", json.dumps(head).encode(), *payload]

    def hello_bad_id(self, own: str | None, safe: int, cur: int) -> Frames:
        """A HELLO with an invalid worker id, or a valid fresh id and another field bad."""
        r = self.rng
        bad_id = r.choice(["", " ", "a b", "x" * 129, "wörker", "../etc/passwd", "id\n", "id;drop", 123, None,
                           ["x"], {"id": "x"}, "client_0\0", "\ud800"])
        head: dict[str, Any] = {"worker_id": bad_id, "num_samples": 10, "capabilities": ["train"]}
        if r.random() < 0.3:  # a valid fresh id, but another field is bad
            head = {"worker_id": f"fuzz_new_{r.randrange(10**6)}", "num_samples": r.choice([-1, 2**41, "10", None]),
                    "capabilities": r.choice(["train", [1], None]), "identity": r.choice(["zz" * 32, "abc", 7])}
        try:
            text = json.dumps(head).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError):
            text = b'{"worker_id": 1}'
        return [b"FL1", b"HELLO", text]

    def wrong_direction(self, own: str | None, safe: int, cur: int) -> Frames:
        """A broker-to-worker message (TASK, WELCOME, ROSTER, SHARES, UNMASK_REQUEST) sent back."""
        r = self.rng
        n = 3
        pick = r.randrange(5)
        if pick == 0:
            return as_frames(Task(cur, "train", {"train": {}}, self.tiny, 0, 2, 30.0).to_frames())
        if pick == 1:
            return as_frames(Welcome(self._wid(own), 1.0, 5.0).to_frames())
        if pick == 2:
            z = np.zeros((n, 32), np.uint8)
            ids = tuple(f"w{i}" for i in range(n))
            return as_frames(Roster(cur, ids, z, z, z, np.zeros((n, 64), np.uint8), z).to_frames())
        if pick == 3:
            return as_frames(Shares(cur, ("w0",), np.zeros((1, CIPHERTEXT_BYTES), np.uint8)).to_frames())
        return as_frames(UnmaskRequest(cur, ("w0",), ("w1",), bytes(32)).to_frames())

    def secagg(self, own: str | None, safe: int, cur: int) -> Frames:
        """A secure-aggregation message (keys, shares, masked input, unmask shares) in a plain round."""
        r = self.rng
        wid = self._wid(own)
        rid = r.choice([cur, safe, FAR_FUTURE])
        pick = r.randrange(4)
        if pick == 0:
            return as_frames(AdvertiseKeys(wid, rid, r.randbytes(32), r.randbytes(32), r.randbytes(32),
                                           r.randbytes(64)).to_frames())
        if pick == 1:
            ciphertexts = np.zeros((1, CIPHERTEXT_BYTES), np.uint8)
            return as_frames(ShareKeys(wid, rid, ("client_1",), ciphertexts).to_frames())
        if pick == 2:
            masked = np.arange(r.randrange(1, 100), dtype=np.uint32)
            return as_frames(MaskedInput(wid, rid, masked, 0.5).to_frames())
        return as_frames(UnmaskShares(wid, rid, ("client_1",), np.zeros((1, SHARE_BYTES), np.uint8), (),
                                      np.zeros((0, SHARE_BYTES), np.uint8)).to_frames())

    def update_wrong_round(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update for a round that is over or never reached."""
        # A past round (a replay: real names and shapes) or one never reached. For a hello socket only
        # rounds it has seen end are "past": a later one might be the round it is (about to be) selected in.
        r = self.rng
        if own is None:
            rid = r.choice([0, max(0, cur - 1), cur + 1, FAR_FUTURE, 2**62])
        else:
            rid = r.choice([r.randint(0, safe), FAR_FUTURE + r.randrange(10**6), 2**62])
        return self._update(self._wid(own), rid)

    def update_wrong_stage(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update for a stage other than ``train``."""
        stage = self.rng.choice(["advertise", "share_keys", "masked_input", "unmask", "eval", "x"])
        return self._update(self._wid(own), self.rng.choice([cur, safe]), stage=stage)

    def update_other_worker(self, own: str | None, safe: int, cur: int) -> Frames:
        """An update under an honest client's id (or an unknown one)."""
        return self._update(self.rng.choice([*self.honest, "fuzz_ghost"]), self.rng.choice([cur, safe]))

    def heartbeat_other_worker(self, own: str | None, safe: int, cur: int) -> Frames:
        """A HEARTBEAT under an honest client's id (or an unknown one)."""
        return as_frames(Heartbeat(self.rng.choice([*self.honest, "fuzz_ghost"])).to_frames())

    def replay_captured(self, own: str | None, safe: int, cur: int) -> Frames:
        """A real broker message captured earlier (``wrong_direction`` until there is one)."""
        if self.captured:
            return list(self.rng.choice(self.captured))
        return self.wrong_direction(own, safe, cur)

    def bit_flip(self, own: str | None, safe: int, cur: int) -> Frames:
        """A base or recently captured message with 1 to 3 bits flipped (or an empty frame filled)."""
        r = self.rng
        frames = list(r.choice(self.bases + self.captured[-3:]))
        for _ in range(r.randrange(1, 4)):
            i = r.randrange(len(frames))
            frame = frames[i]
            if not frame:
                frames[i] = bytes([r.randrange(256)])
                continue
            pos = r.randrange(len(frame))
            frames[i] = frame[:pos] + bytes([frame[pos] ^ (1 << r.randrange(8))]) + frame[pos + 1:]
        return frames

    def error_or_bye(self, own: str | None, safe: int, cur: int) -> Frames:
        """An ERROR about an earlier round (hello socket); an ERROR or a BYE (raw socket)."""
        if own is not None:
            # A BYE, or an ERROR about the current round, would make a hello socket leave its round (the
            # broker drops a worker that reports one): not fuzz. An ERROR about an earlier round is.
            return as_frames(Error("fuzz", "an error report", cur - 1).to_frames())
        return self.rng.choice([as_frames(Error("fuzz", "x", 1).to_frames()),
                                as_frames(Bye("", "bye").to_frames()),
                                as_frames(Bye("client_0", "bye").to_frames())])

    def current_round_bad_updates(self, own: str, round_id: int) -> list[tuple[str, Frames]]:
        """What a selected hello socket sends for its round: updates right in every respect but their
        tensors, which the broker must refuse (and never average)."""
        m, names = self.small_update, self.names
        first = names[0]
        out: list[tuple[str, dict[str, np.ndarray]]] = [
            ("cur_float16", {n: w.astype(np.float16) for n, w in m.items()}),
            ("cur_int32", {n: np.zeros(w.shape, np.int32) for n, w in m.items()}),
            ("cur_uint8", {n: np.zeros(w.shape, np.uint8) for n, w in m.items()}),
            ("cur_missing", {n: w for n, w in m.items() if n != first}),
            ("cur_extra", {**m, "layers.9.weight": np.zeros(3, np.float32)}),
            ("cur_renamed", {(n + "_x" if n == first else n): w for n, w in m.items()}),
            ("cur_flat", {n: w.reshape(-1) for n, w in m.items()}),
            ("cur_wrong_shape", {**m, first: np.zeros(m[first].shape[::-1] + (1,), np.float32)}),
            ("cur_empty", {}),
        ]
        msgs = [(name, self._update(own, round_id, tensors=t)) for name, t in out]
        bf16 = encode(Kind.UPDATE, {"worker_id": own, "round_id": round_id, "stage": "train", "num_samples": 10,
                                    "metrics": {}},
                      {n: np.zeros(w.shape, np.uint16) for n, w in m.items()},
                      wire_dtypes={n: "bfloat16" for n in m})
        msgs.append(("cur_bfloat16", as_frames(bf16)))
        head = json.loads(self._update(own, round_id)[2])
        head["num_samples"] = 0
        msgs.append(("cur_zero_samples", [b"FL1", b"UPDATE", json.dumps(head).encode(),
                                          *self._update(own, round_id)[3:]]))
        return msgs

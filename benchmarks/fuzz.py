"""Fuzz a live broker over TCP while honest rounds run, and check that nothing it holds moved.

A real ``fl broker`` process on 127.0.0.1 runs R rounds with H honest clients (one worker process of
the kind ``fl simulate`` starts), twice with the same seed: first alone (the reference), then while a
fuzzer throws ``--count`` messages at it from several DEALER sockets:

- **raw** sockets never say HELLO. Their messages are refused at decoding or at the door ("unknown
  connection"): random bytes, truncated messages, wrong version, unknown kinds, non-UTF-8 and non-object
  headers, headers over the 64 KiB limit, huge declared tensor sizes, too many frames, bad dtypes,
  frame lengths that do not match shapes, NaN tensors, HELLOs with a bad worker id, bit flips of valid
  messages, and replays of real messages captured from the broker. One of them now and then sends a
  frame over the socket's MAXMSGSIZE, which libzmq answers by closing the connection.
- **hello** sockets say a valid HELLO under their own fresh ids (``fuzz_0``, ...) and so get past the
  connection check to the deeper validation: updates for past rounds (replays with the model's real
  tensor names and shapes), for far-future rounds, for the wrong stage, under an honest client's id;
  for the current round, updates whose tensors have the wrong dtype, shape or names; secure-aggregation
  messages in a plain round; broker-to-worker kinds (a captured TASK) sent back. The broker may select
  them (``clients_per_round`` counts them): each then holds its round open until its share of the fuzz
  is sent, and leaves it with a BYE (a dropout the broker counts as "left") and a new HELLO. So every
  honest round runs under fire, however fast or slow the machine.

**"State unchanged"** (``state_unchanged``) means all of:

1. the broker process is alive when the fuzz ends, and afterwards finishes its rounds and exits 0
   without a traceback on stderr;
2. the store holds exactly rounds 1..R, all complete, each with exactly the honest clients as survivors;
   a fuzz id appears only as a participant that dropped (no fuzz message was accepted as an update);
3. every checkpoint, the initial model and the model after each round, is bit-for-bit the reference
   run's (the job is deterministic for a fixed seed: anything accepted into an aggregate, or a round
   that failed and shifted the round ids, would show);
4. the workers table holds the honest clients and the hello sockets' ids and nothing else (no id out of
   a refused HELLO); every honest client completed every round and was never dropped.

A HELLO with a *valid* new id, or with an honest client's id, is not fuzz but a new worker (or, without
transport security, an impersonation: README's threat model); the fuzzer never sends one, and checks
locally (``skipped_unsafe``) that no mutation turned into one, nor into an update the broker would
rightly accept from a selected hello socket.

Prints one JSON line: ``{"messages", "seconds", "msgs_per_s", "broker_alive", "errors_received",
"errors_expected", "honest_rounds_completed", "state_unchanged", ...}``. ``seconds`` runs from the first
fuzz message to the last ERROR reply. Also: ``refusals_logged`` (the refusals the broker's log counts:
its rate-limited "refused a message" lines plus the "N more refusals" they summarise, which should
equal ``errors_expected``), ``broker_send_queue_full`` (answers the broker could not
queue to a flooding socket, so ``errors_received`` falls short by about that much), the broker's CPU
time per message, its RSS before and after, and counts by category and by ERROR code. Usage::

    uv run python benchmarks/fuzz.py [--count 100000] [--rounds 4] [--honest 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq
from procs import cpu_s, free_port, rss_mb

from federated.broker.store import RoundStore
from federated.protocol import (
    CIPHERTEXT_BYTES,
    SHARE_BYTES,
    AdvertiseKeys,
    Bye,
    Error,
    Heartbeat,
    Hello,
    Kind,
    Limits,
    MaskedInput,
    ProtocolError,
    Roster,
    ShareKeys,
    Shares,
    Task,
    UnmaskRequest,
    UnmaskShares,
    Update,
    Welcome,
    decode_message,
    encode,
)

Frames = list[bytes]
#: Round ids at or above this are never reached: updates for them are always refused.
FAR_FUTURE = 10**6
HEARTBEAT_EVERY_S = 0.5
#: Most ERROR replies a hello socket leaves outstanding (the broker's per-peer send queue holds 64).
WINDOW = 32


# ----------------------------------------------------------------------------------------- processes




_MORE_REFUSALS = re.compile(r"and (\d+) more refusals since the last line")


class Child:
    """A child process; threads collect its stdout JSON events and count/keep its stderr lines."""

    def __init__(self, args: list[str], keep_stderr: int = 200, log: Path | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = None if log is None else log.open("w", encoding="utf-8")
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.tail: list[str] = []
        self.keep = keep_stderr
        self.counts: Counter[str] = Counter()
        self.watch: tuple[str, ...] = ("refused a message", "could not send", "Traceback", "joined with")
        self.joined: list[str] = []
        self.stderr_bytes = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for raw in iter(self.popen.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in iter(self.popen.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.log is not None:
                self.log.write(line + "\n")
            with self._lock:
                self.stderr_bytes += len(raw)
                for w in self.watch:
                    if w in line:
                        self.counts[w] += 1
                # The broker logs at most one refusal line a second and counts the rest in it
                # ("... (and N more refusals since the last line)"), with a last count when it stops.
                more = _MORE_REFUSALS.search(line)
                if more:
                    self.counts["refused a message"] += int(more.group(1))
                if "joined with" in line:
                    self.joined.append(line.split("worker ", 1)[-1].split(" ", 1)[0])
                self.tail.append(line)
                if len(self.tail) > self.keep:
                    del self.tail[: len(self.tail) - self.keep]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)






class Job:
    """One honest federated job: a broker and one worker process hosting ``honest`` clients."""

    def __init__(self, run_dir: Path, args: argparse.Namespace, extra_clients: int) -> None:
        self.run_dir = run_dir
        self.store = run_dir / "store.db"
        self.port = free_port()
        self.honest_ids = [f"client_{i}" for i in range(args.honest)]
        cohort = args.honest + extra_clients
        config = {
            "num_clients": cohort, "clients_per_round": cohort, "min_clients": args.honest,
            "num_rounds": args.rounds, "seed": args.seed, "dataset": "digits", "partition": "iid", "model": "mlp",
            "training": {"local_epochs": args.local_epochs},
            "broker": {"bind": f"tcp://127.0.0.1:{self.port}", "store": str(self.store),
                       # Rounds are held open by the fuzzer for as long as its share takes.
                       "round_timeout_s": float(args.timeout), "start_timeout_s": 2.0,
                       "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 15.0, "max_failed_rounds": 1},
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        self.broker = Child([sys.executable, "-m", "federated.cli.main", "broker", "--config",
                             str(run_dir / "config.yaml"), "--events", "-v"],
                            log=run_dir / "broker.log" if args.keep else None)
        self.worker = Child([sys.executable, "-m", "federated.cli.simworker", "--server-address",
                             f"127.0.0.1:{self.port}", "--dataset", "digits", "--partition", "iid",
                             "--num-shards", str(args.honest), "--shards", ",".join(map(str, range(args.honest))),
                             "--seed", str(args.seed), "--model", "mlp"])
        self.rounds: list[dict[str, Any]] = []
        self.done: dict[str, Any] | None = None

    def poll_events(self) -> None:
        while True:
            try:
                event = self.broker.events.get_nowait()
            except queue.Empty:
                return
            if event.get("event") == "round":
                self.rounds.append(event)
            elif event.get("event") == "done":
                self.done = event

    def wait_joined(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not set(self.honest_ids) <= set(self.broker.joined):
            if time.monotonic() > deadline or not self.broker.alive() or not self.worker.alive():
                raise RuntimeError("honest clients did not join:\n" + "\n".join(self.broker.tail[-20:]))
            time.sleep(0.05)

    def finish(self, timeout: float) -> int | None:
        """Wait for the broker to exit; returns its exit status (None if it had to be killed)."""
        try:
            code: int | None = self.broker.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.broker.stop()
        try:
            self.worker.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.worker.stop()
        time.sleep(0.2)  # let the reader threads take the last lines
        self.poll_events()
        return code


# ----------------------------------------------------------------------------------------- messages


def _b(frames: list[Any]) -> Frames:
    return [bytes(f) for f in frames]


class Mutator:
    """Makes fuzz messages. ``own`` is the sending socket's worker id (None: a raw socket)."""

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
            _b(Heartbeat("x").to_frames()),
            _b(Update("x", 1, "train", 10, {"loss": 1.0}, self.tiny).to_frames()),
            _b(Update("x", 1, "train", 10, {"loss": 1.0}, self.small_update).to_frames()),
            _b(Error("oops", "bad", 1).to_frames()),
            _b(MaskedInput("x", 1, np.arange(8, dtype=np.uint32), 0.1).to_frames()),
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
        name = self.rng.choices(self._names, self._weights)[0]
        return name, self._funcs[name](own, safe_past, current)

    # -- helpers
    def _wid(self, own: str | None) -> str:
        return own or self.rng.choice(["x", "fuzz_raw", *self.honest])

    def _update(self, wid: str, round_id: int, stage: str = "train", tensors: dict[str, np.ndarray] | None = None,
                num_samples: int = 10) -> Frames:
        return _b(Update(wid, round_id, stage, num_samples, {"loss": 0.5, "accuracy": 0.5},
                         self.small_update if tensors is None else tensors).to_frames())

    def _header(self, kind: bytes, header: Any) -> Frames:
        return [b"FL1", kind, json.dumps(header).encode()]

    # -- categories: (own id or None, highest safe past round, current round) -> frames
    def random_frames(self, own: str | None, safe: int, cur: int) -> Frames:
        r = self.rng
        return [r.randbytes(r.randrange(0, 300)) for _ in range(r.randrange(1, 7))]

    def truncated(self, own: str | None, safe: int, cur: int) -> Frames:
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
        version = self.rng.choice([b"", b"FL0", b"FL2", b"fl1", b"FL1\0", self.rng.randbytes(16), b"FL1" * 50])
        return [version, *self.rng.choice(self.bases)[1:]]

    def unknown_kind(self, own: str | None, safe: int, cur: int) -> Frames:
        kind = self.rng.choice([b"", b"hello", b"UPDATE\0", b"PING", b"X" * 5000, self.rng.randbytes(8)])
        return [b"FL1", kind, json.dumps({"worker_id": self._wid(own)}).encode()]

    def header_not_utf8(self, own: str | None, safe: int, cur: int) -> Frames:
        head = self.rng.choice([b"\xff\xfe{}", b'{"worker_id": "\xc3\x28"}', b"\x80" * 10, self.rng.randbytes(64)])
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE", b"HELLO"]), head]

    def header_not_object(self, own: str | None, safe: int, cur: int) -> Frames:
        head = self.rng.choice([b"[]", b"1", b'"s"', b"null", b"true", b'[{"worker_id": "x"}]', b"1.5", b""])
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE", b"HELLO", b"BYE"]), head]

    def header_bad_json(self, own: str | None, safe: int, cur: int) -> Frames:
        head = self.rng.choice([
            b"{", b'{"worker_id": NaN}', b'{"round_id": Infinity}', b'{"x": 1e999}', self.deep,
            b'{"round_id": ' + b"9" * 5000 + b"}", b"{'single': 1}", b'{"a": 1,}', b'{"worker_id": "x"} trailing',
        ])
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE", b"HELLO"]), head]

    def header_over_limit(self, own: str | None, safe: int, cur: int) -> Frames:
        return [b"FL1", self.rng.choice([b"HEARTBEAT", b"UPDATE"]), self.rng.choice(self.big_header)]

    def huge_declared(self, own: str | None, safe: int, cur: int) -> Frames:
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
        head, payload = self._update_parts(own, cur)
        i = self.rng.randrange(len(payload))
        cut = self.rng.choice([0, 1, len(payload[i]) - 1, len(payload[i]) + 4, len(payload[i]) * 2])
        payload[i] = (payload[i] * 3)[:cut]
        return [b"FL1", b"UPDATE", json.dumps(head).encode(), *payload]

    def chunk_mismatch(self, own: str | None, safe: int, cur: int) -> Frames:
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
        head, payload = self._update_parts(own, cur)
        i = self.rng.randrange(len(payload))
        head["tensors"][i]["dtype"] = self.rng.choice(["float64", "complex64", "object", "", "U8", "<f4", "bool",
                                                       None, 5, ["float32"], "float128", "V4"])
        return [b"FL1", b"UPDATE", json.dumps(head).encode(), *payload]

    def non_finite(self, own: str | None, safe: int, cur: int) -> Frames:
        value = self.rng.choice([np.nan, np.inf, -np.inf])
        tensors = {n: w.copy() for n, w in self.small_update.items()}
        name = self.rng.choice(self.names)
        tensors[name].reshape(-1)[self.rng.randrange(tensors[name].size)] = value
        return self._update(self._wid(own), cur, tensors=tensors)

    def too_many_frames(self, own: str | None, safe: int, cur: int) -> Frames:
        n = Limits().max_frames + self.rng.randrange(1, 100)
        return [b"FL1", b"UPDATE", b'{"worker_id": "x"}', *([b""] * n)]

    def frames_on_plain_kind(self, own: str | None, safe: int, cur: int) -> Frames:
        kind = self.rng.choice([b"HEARTBEAT", b"HELLO", b"BYE", b"ERROR"])
        return [b"FL1", kind, json.dumps({"worker_id": self._wid(own)}).encode(), b"\0" * 8]

    def bad_fields(self, own: str | None, safe: int, cur: int) -> Frames:
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
        r = self.rng
        n = 3
        pick = r.randrange(5)
        if pick == 0:
            return _b(Task(cur, "train", {"train": {}}, self.tiny, 0, 2, 30.0).to_frames())
        if pick == 1:
            return _b(Welcome(self._wid(own), 1.0, 5.0).to_frames())
        if pick == 2:
            z = np.zeros((n, 32), np.uint8)
            ids = tuple(f"w{i}" for i in range(n))
            return _b(Roster(cur, ids, z, z, z, np.zeros((n, 64), np.uint8), z).to_frames())
        if pick == 3:
            return _b(Shares(cur, ("w0",), np.zeros((1, CIPHERTEXT_BYTES), np.uint8)).to_frames())
        return _b(UnmaskRequest(cur, ("w0",), ("w1",), bytes(32)).to_frames())

    def secagg(self, own: str | None, safe: int, cur: int) -> Frames:
        r = self.rng
        wid = self._wid(own)
        rid = r.choice([cur, safe, FAR_FUTURE])
        pick = r.randrange(4)
        if pick == 0:
            return _b(AdvertiseKeys(wid, rid, r.randbytes(32), r.randbytes(32), r.randbytes(32),
                                    r.randbytes(64)).to_frames())
        if pick == 1:
            return _b(ShareKeys(wid, rid, ("client_1",), np.zeros((1, CIPHERTEXT_BYTES), np.uint8)).to_frames())
        if pick == 2:
            return _b(MaskedInput(wid, rid, np.arange(r.randrange(1, 100), dtype=np.uint32), 0.5).to_frames())
        return _b(UnmaskShares(wid, rid, ("client_1",), np.zeros((1, SHARE_BYTES), np.uint8), (),
                               np.zeros((0, SHARE_BYTES), np.uint8)).to_frames())

    def update_wrong_round(self, own: str | None, safe: int, cur: int) -> Frames:
        # A past round (a replay: real names and shapes) or one never reached. For a hello socket only
        # rounds it has seen end are "past": a later one might be the round it is (about to be) selected in.
        r = self.rng
        if own is None:
            rid = r.choice([0, max(0, cur - 1), cur + 1, FAR_FUTURE, 2**62])
        else:
            rid = r.choice([r.randint(0, safe), FAR_FUTURE + r.randrange(10**6), 2**62])
        return self._update(self._wid(own), rid)

    def update_wrong_stage(self, own: str | None, safe: int, cur: int) -> Frames:
        stage = self.rng.choice(["advertise", "share_keys", "masked_input", "unmask", "eval", "x"])
        return self._update(self._wid(own), self.rng.choice([cur, safe]), stage=stage)

    def update_other_worker(self, own: str | None, safe: int, cur: int) -> Frames:
        return self._update(self.rng.choice([*self.honest, "fuzz_ghost"]), self.rng.choice([cur, safe]))

    def heartbeat_other_worker(self, own: str | None, safe: int, cur: int) -> Frames:
        return _b(Heartbeat(self.rng.choice([*self.honest, "fuzz_ghost"])).to_frames())

    def replay_captured(self, own: str | None, safe: int, cur: int) -> Frames:
        if self.captured:
            return list(self.rng.choice(self.captured))
        return self.wrong_direction(own, safe, cur)

    def bit_flip(self, own: str | None, safe: int, cur: int) -> Frames:
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
        if own is not None:
            # A BYE, or an ERROR about the current round, would make a hello socket leave its round (the
            # broker drops a worker that reports one): not fuzz. An ERROR about an earlier round is.
            return _b(Error("fuzz", "an error report", cur - 1).to_frames())
        return self.rng.choice([_b(Error("fuzz", "x", 1).to_frames()), _b(Bye("", "bye").to_frames()),
                                _b(Bye("client_0", "bye").to_frames())])

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
        msgs.append(("cur_bfloat16", _b(bf16)))
        head = json.loads(self._update(own, round_id)[2])
        head["num_samples"] = 0
        msgs.append(("cur_zero_samples", [b"FL1", b"UPDATE", json.dumps(head).encode(),
                                          *self._update(own, round_id)[3:]]))
        return msgs


def expectation(frames: Frames, own: str | None, safe_past: int, model: dict[str, np.ndarray]) -> str:
    """What the broker should do with ``frames`` from a socket whose worker id is ``own``: "reply" (an
    ERROR), "silent" (accepted or ignored without a word), or "unsafe" (it would be a real worker's
    act: a valid HELLO, BYE, or an update it could rightly accept; the fuzzer never sends these)."""
    kind = frames[1] if len(frames) > 1 else b""
    if kind not in (b"HELLO", b"BYE", b"ERROR", b"HEARTBEAT", b"UPDATE"):
        return "reply"
    try:
        msg = decode_message(frames)
    except ProtocolError:
        return "reply"
    if isinstance(msg, Hello):
        return "unsafe"
    if own is None:
        return "silent" if isinstance(msg, (Bye, Error)) else "reply"
    if isinstance(msg, Bye):
        return "unsafe" if msg.worker_id in ("", own) else "reply"
    if isinstance(msg, Error):
        return "silent"
    if isinstance(msg, Heartbeat):
        return "silent" if msg.worker_id == own else "reply"
    if isinstance(msg, Update) and msg.worker_id == own and msg.stage == "train" and 0 < msg.round_id:
        compatible = msg.update.keys() == model.keys() and all(
            msg.update[n].shape == w.shape and msg.update[n].dtype == np.float32 for n, w in model.items())
        if compatible and safe_past < msg.round_id < FAR_FUTURE:
            return "unsafe"
    return "reply"


# ----------------------------------------------------------------------------------------- fuzzer


class FuzzSocket:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, own: str | None) -> None:
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 200)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(endpoint)
        self.own = own
        self.welcomed = False
        self.current = 0  # round of the last TASK received
        self.pending = False  # selected in ``current`` and not left yet
        self.safe_past = 0  # every round <= this is over for the broker, or left by us
        self.next_heartbeat = 0.0
        self.outbox: list[tuple[str, Frames, str]] = []  # (category, frames, expectation), sent in order
        self.done = False
        self.polling_out = True
        self.awaiting = 0  # messages sent that the broker should answer with an ERROR
        self.replies = 0  # ERRORs received
        self.last_reply = time.monotonic()

    def window_open(self) -> bool:
        """A hello socket keeps at most WINDOW answers outstanding: the broker treats a peer whose send
        queue is full as unreachable and drops it, and these sockets must stay registered to hold their
        rounds. (Raw sockets flood: there the drops are part of the test.)"""
        if self.own is None or self.awaiting - self.replies < WINDOW:
            return True
        if time.monotonic() - self.last_reply > 2.0:  # an answer was lost: do not wait for it forever
            self.awaiting = self.replies
            return True
        return False

    def hello(self) -> None:
        assert self.own is not None
        self.outbox.insert(0, ("hello", _b(Hello(self.own, 1, ("train",)).to_frames()), "control"))


def fuzz(job: Job, args: argparse.Namespace, model: dict[str, np.ndarray]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    mut = Mutator(rng, model, job.honest_ids)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{job.port}"
    hello = [FuzzSocket(ctx, endpoint, f"fuzz_{i}") for i in range(args.hello_sockets)]
    raw = [FuzzSocket(ctx, endpoint, None) for _ in range(args.raw_sockets)]
    sockets = hello + raw
    try:
        for s in hello:
            s.hello()
        by_zmq = {s.sock: s for s in sockets}
        poller = zmq.Poller()
        for s in sockets:
            poller.register(s.sock, zmq.POLLIN | zmq.POLLOUT)
        count: int = args.count
        oversize_every = max(1, count // max(1, args.oversize)) if args.oversize else 0
        sent = 0
        expected: Counter[str] = Counter()
        categories: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        received_errors = 0
        skipped: Counter[str] = Counter()
        tasks_seen: set[int] = set()
        rounds_at_start = len(job.rounds)
        rss_before = rss_mb(job.broker.popen.pid)
        cpu_before = cpu_s(job.broker.popen.pid)
        refusals_before = job.broker.counts["refused a message"]
        started = time.perf_counter()
        last_reply = started
        deadline = time.monotonic() + args.timeout
        broker_alive = True
        releasing = False
        next_check = 0.0

        def quota(round_id: int) -> int:
            # A selected hello socket leaves round r once this much of the fuzz is sent: R equal shares.
            rounds = int(args.rounds)
            return math.ceil(count * min(round_id, rounds) / rounds)

        def on_message(s: FuzzSocket, frames: Frames) -> None:
            nonlocal received_errors, last_reply
            try:
                msg = decode_message(frames)
            except ProtocolError:
                codes["undecodable_reply"] += 1
                return
            if isinstance(msg, Error):
                received_errors += 1
                s.replies += 1
                s.last_reply = time.monotonic()
                codes[msg.code] += 1
                last_reply = time.perf_counter()
                if msg.code == "unknown_worker" and s.own is not None and s.welcomed:
                    s.welcomed = False  # the broker forgot us (e.g. send queue full): announce again
                    s.hello()
            elif s.own is None:
                codes[f"unexpected_{type(msg).__name__}"] += 1
            elif isinstance(msg, Welcome):
                s.welcomed = True
                if len(mut.captured) < 8:
                    mut.captured.append(frames)
            elif isinstance(msg, Task):
                tasks_seen.add(msg.round_id)
                if len(mut.captured) < 8 or rng.random() < 0.1:
                    mut.captured.append(frames)
                    del mut.captured[:-8]
                s.safe_past = max(s.safe_past, msg.round_id - 1)
                s.current, s.pending = msg.round_id, True
                if releasing:
                    leave(s)
                else:
                    queued = sum(1 for t in sockets for o in t.outbox if o[2] != "control")
                    room = max(0, count - sent - queued)  # exactly ``count`` messages in all
                    for name, bad in mut.current_round_bad_updates(s.own, msg.round_id)[:room]:
                        s.outbox.append((name, bad, expectation(bad, s.own, s.safe_past, model)))
            elif isinstance(msg, Bye):
                s.done = True

        def leave(s: FuzzSocket) -> None:
            if s.pending:
                s.pending = False
                s.safe_past = max(s.safe_past, s.current)
                # BYE takes it out of the registry and the round (a dropout, "left"); HELLO brings it back for
                # the next round. (A HELLO alone on the same connection keeps its session, and its place.)
                s.outbox.append(("leave", _b(Bye(s.own or "", "fuzz share sent").to_frames()), "control"))
                s.outbox.append(("hello", _b(Hello(s.own or "", 1, ("train",)).to_frames()), "control"))

        def send_ready(s: FuzzSocket, budget: int) -> None:
            nonlocal sent
            for _ in range(budget):
                if not s.outbox:
                    queued = sum(1 for t in sockets for o in t.outbox if o[2] != "control")
                    if sent + queued >= count or (s.own is not None and not s.welcomed) or not s.window_open():
                        return
                    due = (categories["oversize_frame"] + 0.5) * oversize_every
                    if oversize_every and s is raw[-1] and sent >= due:
                        s.outbox.append(("oversize_frame", [b"FL1", b"UPDATE", mut.oversize], "none"))
                    else:
                        name, frames = mut.pick(s.own, s.safe_past, s.current)
                        expect = expectation(frames, s.own, s.safe_past, model)
                        if expect == "unsafe":
                            skipped[name] += 1
                            continue
                        s.outbox.append((name, frames, expect))
                name, frames, expect = s.outbox[0]
                try:
                    s.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    return
                s.outbox.pop(0)
                if expect == "reply":
                    s.awaiting += 1
                if expect != "control":
                    sent += 1
                    categories[name] += 1
                    expected[expect] += 1

        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.2
                job.poll_events()
                if not job.broker.alive():
                    broker_alive = False
                    break
            for s in hello:
                if s.welcomed and now >= s.next_heartbeat:
                    s.next_heartbeat = now + HEARTBEAT_EVERY_S
                    s.outbox.append(("heartbeat", _b(Heartbeat(s.own or "").to_frames()), "control"))
                # The last round is held until the fuzz is over and answered, so the broker must still be
                # running when it ends (it stops after its last round).
                if s.pending and s.current < args.rounds and sent >= quota(s.current):
                    leave(s)
            # Everything out: wait for the replies still in flight (some may be lost: not for long), then stop.
            if sent >= count and not any(s.outbox for s in sockets) and (
                    received_errors >= expected["reply"] or time.perf_counter() - last_reply > 3.0):
                break
            for s in sockets:
                # Ask for POLLOUT only with something to send: a writable socket would make poll() spin.
                wants = bool(s.outbox) or (sent < count and (s.own is None or s.welcomed) and s.window_open())
                if wants != s.polling_out:
                    s.polling_out = wants
                    poller.modify(s.sock, zmq.POLLIN | (zmq.POLLOUT if wants else 0))
            for zsock, ev in poller.poll(50):
                s = by_zmq[zsock]
                if ev & zmq.POLLIN:
                    for _ in range(1000):
                        try:
                            frames = zsock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        on_message(s, frames)
                if ev & zmq.POLLOUT:
                    send_ready(s, 32)
        seconds = last_reply - started if received_errors else time.perf_counter() - started
        job.poll_events()
        broker_alive = broker_alive and job.broker.alive()
        rss_after = rss_mb(job.broker.popen.pid)
        cpu_after = cpu_s(job.broker.popen.pid)
        broker_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        rounds_during_fuzz = max(tasks_seen, default=0)
        rounds_completed_during_fuzz = len(job.rounds) - rounds_at_start

        # Release: leave any held round, and from now on leave every round at once, until the broker's BYE.
        releasing = True
        for s in hello:
            leave(s)
        for s in sockets:
            poller.modify(s.sock, zmq.POLLIN)
        release_deadline = time.monotonic() + args.timeout
        while job.broker.alive() and time.monotonic() < release_deadline:
            now = time.monotonic()
            for s in hello:
                if s.welcomed and now >= s.next_heartbeat:
                    s.next_heartbeat = now + HEARTBEAT_EVERY_S
                    s.outbox.append(("heartbeat", _b(Heartbeat(s.own or "").to_frames()), "control"))
                while s.outbox and s.outbox[0][2] == "control":
                    try:
                        s.sock.send_multipart(s.outbox[0][1], zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    s.outbox.pop(0)
                s.outbox = [o for o in s.outbox if o[2] == "control"]
            for zsock, ev in poller.poll(100):
                s = by_zmq[zsock]
                if ev & zmq.POLLIN:
                    while True:
                        try:
                            frames = zsock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        sent_before = sent
                        on_message(s, frames)
                        assert sent == sent_before
            job.poll_events()
        return {
            "messages": sent, "seconds": round(seconds, 3), "msgs_per_s": round(sent / seconds, 1) if seconds else None,
            "broker_alive": broker_alive, "errors_received": received_errors, "errors_expected": expected["reply"],
            "silent_expected": expected["silent"], "oversize_frames": expected["none"],
            "refusals_logged": job.broker.counts["refused a message"] - refusals_before,
            "skipped_unsafe": sum(skipped.values()), "skipped_unsafe_by_category": dict(sorted(skipped.items())),
            "rounds_during_fuzz": rounds_during_fuzz,
            "rounds_completed_during_fuzz": rounds_completed_during_fuzz,
            "broker_cpu_s": None if broker_cpu is None else round(broker_cpu, 2),
            "broker_cpu_us_per_msg": None if broker_cpu is None or not sent else round(broker_cpu / sent * 1e6, 1),
            "broker_rss_mb_before": rss_before, "broker_rss_mb_after": rss_after,
            "categories": dict(sorted(categories.items())), "error_codes": dict(sorted(codes.items())),
        }
    finally:
        for s in sockets:
            s.sock.close(linger=0)
        ctx.term()


# ----------------------------------------------------------------------------------------- checks


def compare(ref_store: Path, fuzz_store: Path, honest: list[str], fuzz_ids: list[str],
            rounds: int) -> dict[str, Any]:
    """The checks behind ``state_unchanged`` (see the module docstring)."""
    checks: dict[str, Any] = {}
    with RoundStore(ref_store, readonly=True) as ref, RoundStore(fuzz_store, readonly=True) as got:
        ref_rounds, got_rounds = ref.list_rounds(), got.list_rounds()
        checks["reference_complete"] = [r.status for r in ref_rounds] == ["complete"] * rounds
        checks["rounds_1_to_R_complete"] = ([r.round for r in got_rounds] == list(range(1, rounds + 1))
                                            and all(r.status == "complete" for r in got_rounds))
        checks["survivors_exactly_honest"] = all(sorted(r.survivors) == sorted(honest) for r in got_rounds)
        checks["fuzz_only_as_dropouts"] = all(set(r.dropped) <= set(fuzz_ids)
                                              and set(r.participants) <= set(honest) | set(fuzz_ids)
                                              for r in got_rounds)
        max_diff = 0.0
        identical = len(ref_rounds) == len(got_rounds) == rounds
        for n in range(rounds + 1):
            try:
                a, b = ref.load_checkpoint(n), got.load_checkpoint(n)
            except (KeyError, ValueError, OSError):
                identical = False
                continue
            if a.keys() != b.keys():
                identical = False
                continue
            for k in a:
                identical = identical and a[k].tobytes() == b[k].tobytes()
                max_diff = max(max_diff, float(np.max(np.abs(a[k].astype(np.float64) - b[k]))))
        checks["checkpoints_bit_identical"] = identical
        checks["checkpoint_max_abs_diff"] = max_diff
        checks["accuracy_identical"] = [r.accuracy for r in ref_rounds] == [r.accuracy for r in got_rounds]
        workers = {w["worker_id"]: w for w in got.list_workers()}
        checks["workers_table_only_known_ids"] = set(honest) <= set(workers) <= set(honest) | set(fuzz_ids)
        checks["honest_never_dropped"] = all(workers.get(h, {}).get("rounds_completed") == rounds
                                             and workers.get(h, {}).get("rounds_dropped") == 0 for h in honest)
    return checks


# ----------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="flfuzz-") as tmp_dir:
        tmp = Path(args.keep or tmp_dir)
        ref = Job(tmp / "reference", args, extra_clients=0)
        try:
            ref.wait_joined(120)
            ref_code = ref.finish(args.timeout)
        finally:
            ref.broker.stop()
            ref.worker.stop()
        job = Job(tmp / "fuzzed", args, extra_clients=args.hello_sockets)
        try:
            job.wait_joined(120)
            with RoundStore(job.store, readonly=True) as store:
                model = store.load_checkpoint(0)
            result = fuzz(job, args, model)
            code = job.finish(args.timeout)
        finally:
            job.broker.stop()
            job.worker.stop()
        fuzz_ids = [f"fuzz_{i}" for i in range(args.hello_sockets)]
        checks = compare(ref.store, job.store, job.honest_ids, fuzz_ids, args.rounds)
        traceback = job.broker.counts["Traceback"] > 0
        checks["broker_exit_code"] = code
        checks["reference_exit_code"] = ref_code
        checks["no_traceback"] = not traceback
        state_unchanged = bool(result["broker_alive"] and code == 0 and not traceback and all(
            v for k, v in checks.items() if isinstance(v, bool)))
        completed = sum(1 for r in job.rounds if r["status"] == "complete")
        return {
            "benchmark": "fuzz", **{k: result[k] for k in ("messages", "seconds", "msgs_per_s", "broker_alive",
                                                         "errors_received", "errors_expected")},
            "honest_rounds_completed": completed, "honest_rounds_expected": args.rounds,
            "state_unchanged": state_unchanged,
            **{k: v for k, v in result.items() if k not in ("messages", "seconds", "msgs_per_s", "broker_alive",
                                                            "errors_received", "errors_expected")},
            "broker_send_queue_full": job.broker.counts["could not send"],
            "broker_stderr_mb": round(job.broker.stderr_bytes / 2**20, 2),
            "checks": checks,
            "setup": {"honest": args.honest, "hello_sockets": args.hello_sockets, "raw_sockets": args.raw_sockets,
                      "rounds": args.rounds, "seed": args.seed, "local_epochs": args.local_epochs},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="fuzz messages to send")
    parser.add_argument("--rounds", type=int, default=4, help="honest rounds (the fuzz is spread over them)")
    parser.add_argument("--honest", type=int, default=3, help="honest clients")
    parser.add_argument("--hello-sockets", type=int, default=2, help="fuzz sockets that say HELLO first")
    parser.add_argument("--raw-sockets", type=int, default=3, help="fuzz sockets that never say HELLO")
    parser.add_argument("--oversize", type=int, default=5, help="frames over MAXMSGSIZE to send (0: none)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="keep the stores and the broker logs in DIR")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before giving up on any phase")
    args = parser.parse_args()
    # SIGTERM (e.g. from a timeout) unwinds like Ctrl-C, so the cleanup kills the broker and workers
    # instead of leaving orphans that reconnect forever.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()

"""The fuzzer's side of the wire: DEALER sockets on the broker's port that send the mutated frames while the
honest job's rounds run, count the ERROR answers, and keep the hello sockets registered and their rounds
held open until their share of the fuzz is sent.

Raw sockets never say HELLO and flood (up to one frame over the socket's MAXMSGSIZE, now and then). Hello
sockets say HELLO under ``fuzz_0``, ...; when the broker selects one it gets the current round's bad
updates and its share of the fuzz, then leaves the round with a BYE (a dropout) and says HELLO again. The
last round is held until the fuzz is over and answered, so the broker is still running when it ends."""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import Counter
from typing import Any

import numpy as np
import zmq
from procs import cpu_s, rss_mb

from federated.protocol import Bye, Error, Heartbeat, Hello, ProtocolError, Task, Welcome, decode_message

from .job import Job
from .mutations import Frames, Mutator, as_frames
from .oracle import expectation

__all__ = ["HEARTBEAT_EVERY_S", "WINDOW", "FuzzSocket", "fuzz"]

#: Seconds between a welcomed hello socket's HEARTBEATs.
HEARTBEAT_EVERY_S = 0.5
#: Most ERROR replies a hello socket leaves outstanding (the broker's per-peer send queue holds 64).
WINDOW = 32


class FuzzSocket:
    """One fuzzing DEALER socket connected to ``endpoint``, and what the driver knows of its state.
    ``own``: the worker id it says HELLO under, or None for a raw socket that never does."""

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

    def heartbeat_if_due(self, now: float) -> None:
        """Queue a HEARTBEAT if the socket is welcomed and ``HEARTBEAT_EVERY_S`` have passed since its last
        (``now``: ``time.monotonic()`` seconds)."""
        if self.welcomed and now >= self.next_heartbeat:
            self.next_heartbeat = now + HEARTBEAT_EVERY_S
            self.outbox.append(("heartbeat", as_frames(Heartbeat(self.own or "").to_frames()), "control"))

    def hello(self) -> None:
        """Queue a HELLO under the socket's own id, ahead of everything else (hello sockets only)."""
        assert self.own is not None
        self.outbox.insert(0, ("hello", as_frames(Hello(self.own, 1, ("train",)).to_frames()), "control"))


def fuzz(job: Job, args: argparse.Namespace, model: dict[str, np.ndarray]) -> dict[str, Any]:
    """Send ``args.count`` fuzz messages at ``job``'s broker while its honest rounds run, then release the
    hello sockets' rounds until the broker says BYE (or ``args.timeout`` seconds pass). ``model`` is the
    job's initial model. Uses ``args.seed``, ``hello_sockets``, ``raw_sockets``, ``oversize``, ``rounds``
    and ``timeout`` (seconds, for the fuzz and again for the release). Returns the figures the benchmark
    prints (see ``fuzz.py``): counts, seconds, the broker's CPU seconds and RSS in MiB, by category and
    by ERROR code. Raises nothing of its own; ZeroMQ errors pass."""
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
                s.outbox.append(("leave", as_frames(Bye(s.own or "", "fuzz share sent").to_frames()), "control"))
                s.outbox.append(("hello", as_frames(Hello(s.own or "", 1, ("train",)).to_frames()), "control"))

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
                s.heartbeat_if_due(now)
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
                s.heartbeat_if_due(now)
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

"""Workers known to the broker, keyed by worker id, with an expiry refreshed by every message.

The pattern is the ZeroMQ guide's Paranoid Pirate: each record carries an expiry time; any message from
the worker pushes it forward; the broker purges expired records on every loop and counts a purged
member of a round's cohort as dropped. All times are ``time.monotonic()`` seconds.

With thousands of workers every message refreshes an expiry and every broker loop asks for the next one,
so neither may cost a pass over all workers: expiries wait in a heap with one entry per worker, a touch
only moves the record's time, and an entry that comes up early (its worker was heard from since) goes
back in at the worker's current expiry. Each call costs O(log n) per entry it looks at, and a worker's
entry comes up at most once per timeout.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

__all__ = ["WorkerRecord", "WorkerRegistry"]


@dataclass
class WorkerRecord:
    """One connected worker. ``route`` is the ZeroMQ routing id of its current connection."""

    worker_id: str
    route: bytes
    num_samples: int
    expires_at: float
    connected_at: float


class WorkerRegistry:
    """Live workers by id and by routing id; a worker id is bound to exactly one connection at a time."""

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"liveness timeout must be positive, got {timeout_s}")
        self.timeout_s = timeout_s
        self._by_id: dict[str, WorkerRecord] = {}
        self._by_route: dict[bytes, str] = {}
        # (expiry, worker id) for every worker, at an expiry no later than its record's; _queued holds the
        # time of each worker's live entry (an entry at any other time is stale and skipped).
        self._heap: list[tuple[float, str]] = []
        self._queued: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._by_id

    def register(self, worker_id: str, route: bytes, num_samples: int, now: float) -> WorkerRecord | None:
        """Bind ``worker_id`` to ``route``. Returns the record it replaces (a re-announcement), if any.

        A re-announcement means the worker lost its previous session (restart or reconnect), so
        whatever it was doing for the broker is gone.
        """
        previous = self._by_id.pop(worker_id, None)
        if previous is not None:
            self._by_route.pop(previous.route, None)
        other = self._by_route.pop(route, None)
        if other is not None and other != worker_id:
            # One connection cannot speak for two ids: the older id loses its binding.
            self._by_id.pop(other, None)
        self._by_id[worker_id] = WorkerRecord(worker_id, route, num_samples, now + self.timeout_s, now)
        self._by_route[route] = worker_id
        self._queue(worker_id, now + self.timeout_s)
        return previous

    def id_of(self, route: bytes) -> str | None:
        """The worker id bound to ``route``, or None if that connection never said HELLO."""
        return self._by_route.get(route)

    def get(self, worker_id: str) -> WorkerRecord | None:
        return self._by_id.get(worker_id)

    def touch(self, worker_id: str, now: float) -> None:
        """Refresh the expiry of ``worker_id`` (any message from it counts)."""
        record = self._by_id.get(worker_id)
        if record is not None:
            record.expires_at = now + self.timeout_s
            self._queue(worker_id, record.expires_at)

    def remove(self, worker_id: str) -> WorkerRecord | None:
        record = self._by_id.pop(worker_id, None)
        if record is not None:
            self._by_route.pop(record.route, None)
        return record

    def expire(self, now: float) -> list[str]:
        """Remove and return the ids of workers whose expiry has passed."""
        dead = []
        while self._heap and self._heap[0][0] <= now:
            wid = self._settle()
            if wid is not None:
                dead.append(wid)
                self.remove(wid)
        return dead

    def live_ids(self) -> list[str]:
        """Ids of registered workers, sorted (so selection is reproducible for a given seed)."""
        return sorted(self._by_id)

    def records(self) -> list[WorkerRecord]:
        return [self._by_id[w] for w in sorted(self._by_id)]

    def next_expiry(self) -> float | None:
        """The earliest expiry of a registered worker (None without workers)."""
        while self._heap and self._settle() is None:
            pass
        return self._heap[0][0] if self._heap else None

    def _queue(self, worker_id: str, expires_at: float) -> None:
        """Make sure ``worker_id`` has an entry no later than ``expires_at`` (a later expiry needs none:
        the entry it has comes up first and is put back then)."""
        queued = self._queued.get(worker_id)
        if queued is None or expires_at < queued:
            self._queued[worker_id] = expires_at
            heapq.heappush(self._heap, (expires_at, worker_id))

    def _settle(self) -> str | None:
        """Look at the heap's first entry: drop it if stale, put it back at its worker's current expiry if
        that is later, and return its worker id if the entry is exactly that worker's expiry (then it
        stays first)."""
        at, wid = self._heap[0]
        record = self._by_id.get(wid)
        if self._queued.get(wid) != at or record is None:
            heapq.heappop(self._heap)
            if self._queued.get(wid) == at:
                del self._queued[wid]
            return None
        if record.expires_at > at:
            heapq.heapreplace(self._heap, (record.expires_at, wid))
            self._queued[wid] = record.expires_at
            return None
        return wid

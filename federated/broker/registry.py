"""Workers known to the broker, keyed by worker id, with an expiry refreshed by every message.

The pattern is the ZeroMQ guide's Paranoid Pirate: each record carries an expiry time; any message from
the worker pushes it forward; the broker purges expired records on every loop and counts a purged
member of a round's cohort as dropped. All times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

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

    def remove(self, worker_id: str) -> WorkerRecord | None:
        record = self._by_id.pop(worker_id, None)
        if record is not None:
            self._by_route.pop(record.route, None)
        return record

    def expire(self, now: float) -> list[str]:
        """Remove and return the ids of workers whose expiry has passed."""
        dead = [wid for wid, rec in self._by_id.items() if rec.expires_at <= now]
        for wid in dead:
            self.remove(wid)
        return dead

    def live_ids(self) -> list[str]:
        """Ids of registered workers, sorted (so selection is reproducible for a given seed)."""
        return sorted(self._by_id)

    def records(self) -> list[WorkerRecord]:
        return [self._by_id[w] for w in sorted(self._by_id)]

    def next_expiry(self) -> float | None:
        return min((r.expires_at for r in self._by_id.values()), default=None)

"""The rounds a worker has contributed a masked input to, so it never does so twice.

A broker that replays a round (after a restart, or on purpose) could otherwise collect the same worker's
update under two survivor sets and subtract the two sums. The broker burns an interrupted round's id
(:mod:`federated.broker.coordinator`), so an honest broker never asks twice; the worker refuses anyway.

Entries are ``(run id, round id)``: the run id is the broker's (random, kept across a resume), so a new
federation may reuse round numbers. What this does not stop: a broker that cheats on purpose can name a
new run id, or send the same global model again in a later round. It then gets a second update computed
with fresh local randomness (another shuffle and batch order, another rounding: see
:mod:`federated.worker.randomness`), never the same one, but a similar one; only differential privacy
bounds what the difference of two such sums reveals (the README's threat model says so). With a ``path`` the ledger is an append-only file, flushed and
fsynced before the masked input leaves, so a restarted worker still refuses; without one it lasts as long
as the process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from federated.durable import fsync_directory

__all__ = ["RoundLedger"]


class RoundLedger:
    """``(run, round)`` pairs already used by one worker identity."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._seen: set[tuple[str, int]] = set()
        if self.path is not None and self.path.exists():
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self._seen.add((str(entry["run"]), int(entry["round"])))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{self.path}:{number}: not a round-ledger entry ({exc})") from None

    def seen(self, run: str, round_id: int) -> bool:
        """Whether this worker already sent a masked input for ``round_id`` of ``run``."""
        return (run, round_id) in self._seen

    def record(self, run: str, round_id: int) -> None:
        """Remember ``(run, round_id)``, durably when the ledger has a file."""
        self._seen.add((run, round_id))
        if self.path is not None:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, (json.dumps({"run": run, "round": round_id}) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_directory(self.path.parent)  # the new file's entry survives a crash too

"""One broker per store: an exclusive lock on ``<store>.lock`` held for the broker's lifetime.

Two brokers on one store would both record rounds (and the second died mid-run with exit status 2). The
lock is ``flock`` on a file beside the database, so the operating system releases it when the broker
process ends in any way (a crash or SIGKILL included); nothing stale is ever left to clean up. The file
holds the owner's pid, for the error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from federated.broker.errors import StoreInUseError

__all__ = ["StoreLock"]


class StoreLock:
    """``with StoreLock(store_path):`` holds the store for this process. Raises StoreInUseError if
    another process holds it."""

    def __init__(self, store: str | Path) -> None:
        self.path = Path(f"{store}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreInUseError(f"another broker (pid {owner}) is running on the store {self.path.with_suffix('')}; "
                                  "stop it first, or use another --store") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

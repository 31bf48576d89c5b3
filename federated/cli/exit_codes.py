"""Exit codes of every command, in one place (scripts and ``fl simulate`` rely on them)."""

from __future__ import annotations

__all__ = ["CONFIG_ERROR", "INTERRUPTED", "OK", "REFUSED", "TRAINING_FAILED"]

OK = 0
#: Training stopped without completing its rounds (too many failed rounds, a worker process failed).
TRAINING_FAILED = 1
#: Bad flag, bad config value, unreadable data or store: nothing was started (``flworker``: also a pinned
#: broker key that every CURVE handshake fails with).
CONFIG_ERROR = 2
#: ``flworker``: the broker refused this worker (its key is not, or no longer, enrolled there).
REFUSED = 3
#: SIGINT / SIGTERM.
INTERRUPTED = 130

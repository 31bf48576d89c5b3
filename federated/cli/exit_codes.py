"""Exit codes of every command, in one place (scripts and ``fl simulate`` rely on them)."""

from __future__ import annotations

__all__ = ["CONFIG_ERROR", "INTERRUPTED", "OK", "TRAINING_FAILED"]

OK = 0
#: Training stopped without completing its rounds (too many failed rounds, a worker process failed).
TRAINING_FAILED = 1
#: Bad flag, bad config value, unreadable data or store: nothing was started.
CONFIG_ERROR = 2
#: SIGINT / SIGTERM.
INTERRUPTED = 130

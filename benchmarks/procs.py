"""Helpers shared by the benchmarks that run real broker and worker processes (Linux /proc readers and a
free loopback port). Imported as ``procs`` when a benchmark runs as ``python benchmarks/NAME.py``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["cpu_s", "free_port", "rss_mb"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB, or None if it is gone (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

"""Process plumbing shared by the benchmarks that run real broker and worker processes: a free loopback
port, Linux /proc readers (RSS, peak RSS, CPU time, child pids), ending a child (SIGKILL, then reap), a
SIGTERM that unwinds, and a child whose stdout JSON events and stderr lines threads collect. Nothing here
knows what the processes are (``flcli`` builds their commands). Imported as ``procs`` when a benchmark
runs as ``python benchmarks/NAME.py``."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["EventProcess", "children", "cpu_s", "free_port", "kill", "peak_rss_mb", "rss_mb",
           "unwind_on_sigterm", "wait_or_kill"]

#: Seconds to wait for a process to be reaped after SIGKILL.
REAP_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_mb(pid: int, field: str) -> float | None:
    """A kB field (``VmRSS``, ``VmHWM``, ...) of ``/proc/PID/status`` in MiB; None if the process is gone or
    has no such field (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB, or None if it is gone (Linux)."""
    return _status_mb(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float | None:
    """The largest resident memory process ``pid`` has had so far (VmHWM) in MiB, or None if it is gone
    (Linux)."""
    return _status_mb(pid, "VmHWM")


def children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid`` (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid``, or None if it is gone (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unwind_on_sigterm() -> None:
    """From now on SIGTERM (e.g. from a timeout) unwinds like Ctrl-C: ``sys.exit(128 + SIGTERM)`` runs the
    ``finally`` blocks, so a benchmark's cleanup kills its broker and workers instead of leaving orphans
    that reconnect forever. Call it from the main thread (``ValueError`` otherwise)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def kill(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``popen`` if it is still running, then reap it.

    Raises ``subprocess.TimeoutExpired`` if it is not gone ``REAP_S`` seconds later."""
    if popen.poll() is None:
        popen.kill()
    popen.wait(timeout=REAP_S)


def wait_or_kill(popen: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """Wait up to ``timeout_s`` seconds for ``popen`` to exit; its exit status, or None if it had to be
    killed (see ``kill``, whose ``TimeoutExpired`` this passes on)."""
    try:
        return popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill(popen)
        return None


class EventProcess:
    """A child process whose output two daemon threads collect as it comes.

    stdout: every line that starts with ``{`` is a JSON event, put on ``events`` (a line that is not
    valid JSON ends the reader thread with a traceback). stderr: each line is written to ``log`` (if
    given), counted in ``counts`` under each ``watch`` substring it contains, passed to
    ``on_stderr_line`` (a hook for subclasses, called under the lock), and kept in ``tail`` (the last
    ``keep_stderr`` lines); ``stderr_bytes`` counts bytes. The child runs with ``PYTHONUNBUFFERED=1``.
    A subclass sets the attributes its hook uses before calling ``__init__``: the threads start there.
    """

    def __init__(self, args: Sequence[str], *, watch: Sequence[str] = (), keep_stderr: int = 200,
                 log: Path | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = None if log is None else log.open("w", encoding="utf-8")
        self.popen = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.tail: list[str] = []
        self.keep = keep_stderr
        self.counts: Counter[str] = Counter()
        self.watch = tuple(watch)
        self.stderr_bytes = 0
        self._lock = threading.Lock()
        self.reader = threading.Thread(target=self._read_stdout, daemon=True)
        self.reader.start()
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
                self.on_stderr_line(line)
                self.tail.append(line)
                if len(self.tail) > self.keep:
                    del self.tail[: len(self.tail) - self.keep]

    def on_stderr_line(self, line: str) -> None:
        """Called with each stderr line (without its newline) after the ``watch`` counts; does nothing."""

    def alive(self) -> bool:
        """The process has not exited yet."""
        return self.popen.poll() is None

    def finished(self) -> bool:
        """The process has exited and every event it printed has been taken from ``events``."""
        return self.popen.poll() is not None and not self.reader.is_alive() and self.events.empty()

    def stop(self) -> None:
        """SIGKILL the process if it still runs, and reap it (see ``kill``)."""
        kill(self.popen)

"""Child processes for tests: free loopback ports, processes that each lead a process group of their own,
and killing a group whole, so that no broker or worker outlives a failed or timed-out test.

Every wait here takes a timeout below pytest-timeout's global one (``timeout`` in pyproject.toml): a hang
then fails the test with the child's own output, and the group is killed, instead of pytest-timeout
stopping the test from outside with the children still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

__all__ = ["BIN", "LONGEST_WAIT_S", "Proc", "free_port", "kill_group", "run_in_group"]

#: The directory of this interpreter's scripts (``flbroker``, ``flworker``, ``fl``).
BIN = Path(sys.executable).parent
#: The longest one wait may be: below pytest-timeout's global 300 s (pyproject.toml).
LONGEST_WAIT_S = 280.0


def _check_timeout(timeout: float) -> None:
    if not 0 < timeout <= LONGEST_WAIT_S:
        raise ValueError(f"a wait of {timeout} s: it must be positive and at most {LONGEST_WAIT_S} s, below "
                         "the global pytest timeout, so that a hang fails the test with the child's output")


#: Ports :func:`free_port` handed out in this run (a test may ask for several before it binds any).
_GIVEN: set[int] = set()
#: Where :func:`free_port` looks when the ephemeral range leaves room below it.
_LOWEST_PORT = 10_000


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel picks from by itself (Linux's ``ip_local_port_range``; elsewhere its default)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that nothing takes before the test binds it.

    ``bind(("127.0.0.1", 0))`` would pick one from the kernel's ephemeral range, the range every outgoing
    connection takes its local port from (a worker connecting, a child of an earlier test still
    reconnecting), so the port could be gone by the time a broker binds it. This one is outside that
    range, where the kernel assigns nothing by itself, was bindable a moment ago, and is never handed out
    twice in one run."""
    low, high = _ephemeral_range()
    ports = range(_LOWEST_PORT, low) if low - _LOWEST_PORT >= 1000 else range(high + 1, 65536)
    rng = random.Random()  # which port is not a secret; only spread matters
    for _ in range(200):
        port = rng.choice(ports)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port among 200 tries in {ports.start}-{ports.stop - 1}")


def kill_group(popen: subprocess.Popen[Any]) -> None:
    """SIGKILL every process of the group ``popen`` leads (started with ``start_new_session=True``), then
    reap ``popen``. Only while ``popen`` is not yet reaped: until then its pid, and so the group id, cannot
    be reused by an unrelated process."""
    if popen.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=10)


def run_in_group(args: Sequence[str], *, timeout: float, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to the end in a session of its own, capturing its output as text. On timeout its whole
    group is killed (a CLI that started a broker and workers takes them with it) and the test fails with
    the end of its stderr."""
    _check_timeout(timeout)
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{list(args)[:4]} did not finish within {timeout} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(list(args), proc.returncode, stdout, stderr)


class Proc:
    """A child process leading its own process group, whose stdout and stderr lines are collected by
    background threads. ``kill()`` (and the ``procs`` fixture of tests/network) kills the group."""

    def __init__(self, args: list[str], *, cwd: Path | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.args = args
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                                      start_new_session=True)
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._err_event = threading.Condition()
        threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, self._err), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[bytes], sink: Callable[[str], None]) -> None:
        for raw in iter(stream.readline, b""):
            sink(raw.decode("utf-8", "replace").rstrip("\n"))

    def _err(self, line: str) -> None:
        with self._err_event:
            self.stderr_lines.append(line)
            self._err_event.notify_all()

    def _tail(self) -> str:
        return "\n".join(self.stderr_lines[-30:])

    def wait_stderr(self, text: str, timeout: float) -> None:
        """Block until a stderr line contains ``text``; fail the test after ``timeout`` seconds or if the
        process exits first."""
        _check_timeout(timeout)
        deadline = time.monotonic() + timeout
        with self._err_event:
            while not any(text in line for line in self.stderr_lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    pytest.fail(f"{text!r} not seen on stderr of {self.args[:2]}:\n{self._tail()}")
                self._err_event.wait(min(left, 0.2))

    def events(self, timeout: float) -> Iterator[dict[str, Any]]:
        """JSON events from stdout until the process exits (``--events``), with an overall timeout."""
        _check_timeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.stdout.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                if self.popen.poll() is not None and self.stdout.empty():
                    return
                if time.monotonic() > deadline:
                    pytest.fail(f"timeout waiting for events from {self.args[:2]}:\n{self._tail()}")
                continue
            if line.startswith("{"):
                yield json.loads(line)

    def wait(self, timeout: float) -> int:
        """The exit status; after ``timeout`` seconds the group is killed and the test fails."""
        _check_timeout(timeout)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.popen)
            pytest.fail(f"{self.args[:2]} did not exit within {timeout} s:\n{self._tail()}")

    def kill(self) -> None:
        """SIGKILL the process and everything it started (its group), as a crash or ``kill -9`` would."""
        kill_group(self.popen)

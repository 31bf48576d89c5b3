"""Helpers for tests that start real broker and worker processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose stdout and stderr lines are collected by background threads."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.args = args
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._err_event = threading.Condition()
        threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, self._err), daemon=True).start()

    @staticmethod
    def _pump(stream: Any, sink: Any) -> None:
        for raw in iter(stream.readline, b""):
            sink(raw.decode("utf-8", "replace").rstrip("\n"))

    def _err(self, line: str) -> None:
        with self._err_event:
            self.stderr_lines.append(line)
            self._err_event.notify_all()

    def wait_stderr(self, text: str, timeout: float) -> None:
        """Block until a stderr line contains ``text``; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._err_event:
            while not any(text in line for line in self.stderr_lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    pytest.fail(f"{text!r} not seen on stderr of {self.args[:2]}:\n" + "\n".join(self.stderr_lines[-30:]))
                self._err_event.wait(min(left, 0.2))

    def events(self, timeout: float) -> Iterator[dict[str, Any]]:
        """JSON events from stdout until the process exits (``--events``), with an overall timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.stdout.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                if self.popen.poll() is not None and self.stdout.empty():
                    return
                if time.monotonic() > deadline:
                    pytest.fail(f"timeout waiting for events from {self.args[:2]}:\n" + "\n".join(self.stderr_lines[-30:]))
                continue
            if line.startswith("{"):
                yield json.loads(line)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail(f"{self.args[:2]} did not exit within {timeout} s:\n" + "\n".join(self.stderr_lines[-30:]))

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes started by a test; all killed at teardown whatever happened."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def broker_config(tmp_path: Path, **broker: Any) -> Path:
    """A YAML config with fast liveness settings for tests (overrides in ``broker``)."""
    settings = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.5, "start_timeout_s": 1.0,
                "round_timeout_s": 20.0, **broker}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"broker": settings}))
    return path

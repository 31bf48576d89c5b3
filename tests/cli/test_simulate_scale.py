"""``fl simulate`` with 1,000 virtual clients, 100 a round, in two worker processes (issue 15).

Every virtual client is a real protocol participant with its own identity and session (a worker
process's clients share its TCP connection, each under a tag of its own), so this checks what breaks
first at scale: every client joins, every round completes with all 100 selected
clients answering, the cohorts are drawn from the whole federation, and no process grows with it (the
broker and each worker stay far below what a copy of the data set per client would cost). Measured
here: about 10 s, peak RSS 100-135 MiB a process (``benchmarks/scale.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import FL, kill_group

from federated.broker.store import RoundStore

#: Peak resident memory allowed to the broker and to each worker process (MiB): about 2.5 times what
#: they take, and below the 320 MiB that one copy of the training split per client would add.
PEAK_RSS_LIMIT_MB = 320.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None)


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak memory from /proc")
def test_a_thousand_clients_hundred_a_round(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    out, err = (tmp_path / "stdout").open("w+"), (tmp_path / "stderr").open("w+")
    popen = subprocess.Popen([*FL, "simulate", "--json", "--store", str(store), "--num-clients", "1000",
                              "--clients-per-round", "100", "--num-rounds", "3", "--local-epochs", "1",
                              "--dataset", "synthetic:5000", "--processes", "2"],
                             stdout=out, stderr=err, text=True, start_new_session=True)
    peaks: dict[int, float] = {}
    roles: dict[int, str] = {}
    deadline = time.monotonic() + 240
    try:
        while popen.poll() is None:
            assert time.monotonic() < deadline, "fl simulate did not finish within 240 s"
            for pid in _children(popen.pid):
                try:  # a process may be gone between any two reads: it counts once both succeeded
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                peak = _peak_rss_mb(pid)
                if peak is not None:
                    roles[pid] = "broker" if b" broker " in command else "worker"
                    peaks[pid] = max(peak, peaks.get(pid, 0.0))
            time.sleep(0.2)
    finally:
        kill_group(popen)
    err.seek(0)
    out.seek(0)
    assert popen.returncode == 0, err.read()[-3000:]
    result = json.loads(out.read().strip().splitlines()[-1])
    assert (result["num_rounds"], result["failed_rounds"]) == (3, 0)
    assert [(r["participants"], r["dropped"]) for r in result["rounds"]] == [(100, 0)] * 3
    with RoundStore(store, readonly=True) as rounds:
        assert len(rounds.list_workers()) == 1000  # every virtual client joined
        cohorts = [set(rounds.get_round(n).participants) for n in (1, 2, 3)]
    # Drawn from the whole federation (three draws of 100 of 1,000 share about 30 clients), not from the
    # first hundred to connect.
    assert len(set.union(*cohorts)) > 200
    assert sorted(roles.values()).count("worker") == 2 and "broker" in roles.values()
    assert max(peaks.values()) < PEAK_RSS_LIMIT_MB, {roles[p]: round(m) for p, m in peaks.items()}

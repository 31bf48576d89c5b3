"""What the fuzz benchmark asserts once the fuzzed run is over: that the broker's state is exactly what it
would have been without the fuzz (``state_unchanged``; ``benchmarks/fuzz.py``'s docstring lists its four
conditions). Condition 1: the broker was alive when the fuzz ended (``state_unchanged``'s ``broker_alive``)
and then exited 0 without a traceback (``process_checks``). Conditions 2 to 4 (``compare``): the fuzzed
run's store against the reference run's: the same rounds, survivors and dropouts, bit-identical
checkpoints, and a workers table of known ids only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from federated.broker.store import RoundStore

__all__ = ["compare", "process_checks", "state_unchanged"]


def compare(ref_store: Path, fuzz_store: Path, honest: list[str], fuzz_ids: list[str],
            rounds: int) -> dict[str, Any]:
    """The store checks: the fuzzed run's store ``fuzz_store`` against the reference run's ``ref_store``
    (SQLite files, opened read-only), for ``rounds`` rounds with the ``honest`` clients and the hello
    sockets' ``fuzz_ids``. Check name -> bool, and ``checkpoint_max_abs_diff`` (the largest absolute
    difference of any checkpoint's weights, a float). A checkpoint missing from either store, or that
    cannot be read, makes ``checkpoints_bit_identical`` False. A store that cannot be opened raises
    ``RoundStore``'s errors (``StoreNotFoundError`` if its file is missing, ``StoreError``)."""
    checks: dict[str, Any] = {}
    with RoundStore(ref_store, readonly=True) as ref, RoundStore(fuzz_store, readonly=True) as got:
        ref_rounds, got_rounds = ref.list_rounds(), got.list_rounds()
        checks["reference_complete"] = [r.status for r in ref_rounds] == ["complete"] * rounds
        checks["rounds_1_to_R_complete"] = ([r.round for r in got_rounds] == list(range(1, rounds + 1))
                                            and all(r.status == "complete" for r in got_rounds))
        checks["survivors_exactly_honest"] = all(sorted(r.survivors) == sorted(honest) for r in got_rounds)
        checks["fuzz_only_as_dropouts"] = all(set(r.dropped) <= set(fuzz_ids)
                                              and set(r.participants) <= set(honest) | set(fuzz_ids)
                                              for r in got_rounds)
        max_diff = 0.0
        identical = len(ref_rounds) == len(got_rounds) == rounds
        for n in range(rounds + 1):
            try:
                a, b = ref.load_checkpoint(n), got.load_checkpoint(n)
            except (KeyError, ValueError, OSError):
                identical = False
                continue
            if a.keys() != b.keys():
                identical = False
                continue
            for k in a:
                identical = identical and a[k].tobytes() == b[k].tobytes()
                max_diff = max(max_diff, float(np.max(np.abs(a[k].astype(np.float64) - b[k]))))
        checks["checkpoints_bit_identical"] = identical
        checks["checkpoint_max_abs_diff"] = max_diff
        checks["accuracy_identical"] = [r.accuracy for r in ref_rounds] == [r.accuracy for r in got_rounds]
        workers = {w["worker_id"]: w for w in got.list_workers()}
        checks["workers_table_only_known_ids"] = set(honest) <= set(workers) <= set(honest) | set(fuzz_ids)
        checks["honest_never_dropped"] = all(workers.get(h, {}).get("rounds_completed") == rounds
                                             and workers.get(h, {}).get("rounds_dropped") == 0 for h in honest)
    return checks


def process_checks(code: int | None, ref_code: int | None, tracebacks: int) -> dict[str, Any]:
    """The process checks: the fuzzed broker's exit status ``code`` and the reference broker's ``ref_code``
    (None: it had to be killed), and whether the fuzzed broker's stderr had no ``Traceback`` line
    (``tracebacks`` counts them)."""
    return {"broker_exit_code": code, "reference_exit_code": ref_code, "no_traceback": tracebacks == 0}


def state_unchanged(checks: dict[str, Any], broker_alive: bool) -> bool:
    """Every boolean check passed, the fuzzed broker exited 0 and had no traceback, and it was alive when
    the fuzz ended (``broker_alive``). ``checks``: ``compare``'s and ``process_checks``' results together;
    raises ``KeyError`` without the latter."""
    return bool(broker_alive and checks["broker_exit_code"] == 0 and checks["no_traceback"] and all(
        v for k, v in checks.items() if isinstance(v, bool)))

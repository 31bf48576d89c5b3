"""Tests of `fl rounds list` and `fl rounds show` against a store filled in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support import last_json

from federated.broker.store import RoundRecord, RoundStore
from federated.cli.rounds import human_bytes, rounds

COMPLETE = RoundRecord(
    round=1,
    status="complete",
    started_at=1_700_000_000.5,
    duration_s=2.345,
    overhead_s=0.0123,
    participants=("alice", "bob", "w[bold]3"),
    survivors=("alice", "bob"),
    dropped=("w[bold]3",),
    num_samples=600,
    bytes_up=1_234_567,
    bytes_down=2_345_678_901,
    accuracy=0.91234,
    loss=0.2345,
    train_loss=0.2,
    train_accuracy=0.93,
    epsilon=1.25,
    metrics={"grad_norm": 1.5, "weird": float("inf")},
)
FAILED = RoundRecord(
    round=2,
    status="failed",
    started_at=1_700_000_010.0,
    duration_s=30.0,
    participants=("alice", "bob"),
    dropped=("alice", "bob"),
    error="only 0 of 2 answered [min_clients=2]",
)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "store.db"
    with RoundStore(path) as store:
        store.record_round(COMPLETE, {"w": np.zeros(4, dtype=np.float32)})
        store.record_round(FAILED, None)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(rounds, list(args), env={"COLUMNS": "120"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_list_table(store_path: Path) -> None:
    code, out, _ = run("list", "--store", str(store_path))
    assert code == 0
    lines = out.splitlines()
    row1 = next(line for line in lines if line.strip().startswith("1 "))
    assert row1.split() == [
        "1",
        "complete",
        "0.9123",
        "-",
        "0.2345",
        "3",
        "1",
        "1.2",
        "MiB",
        "2.2",
        "GiB",
        "2.35",
        "12.3",
        "1.25",
    ]
    row2 = next(line for line in lines if line.strip().startswith("2 "))
    assert row2.split()[:2] == ["2", "failed"]


def test_list_fits_an_80_column_terminal(store_path: Path) -> None:
    result = CliRunner().invoke(rounds, ["list", "--store", str(store_path)], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "…" not in result.stdout and "complete" in result.stdout


def test_list_json(store_path: Path) -> None:
    code, out, _ = run("list", "--store", str(store_path), "--json")
    assert code == 0
    payload = last_json(out)
    assert payload["store"] == str(store_path)
    records = payload["rounds"]
    assert isinstance(records, list) and [r["round"] for r in records] == [1, 2]
    assert records[0]["metrics"] == {"grad_norm": 1.5, "weird": None}  # inf is not JSON
    assert RoundRecord(**records[1]) == FAILED


def test_list_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    RoundStore(path).close()
    code, out, _ = run("list", "--store", str(path))
    assert code == 0 and "No rounds recorded yet" in out
    code, out, _ = run("list", "--store", str(path), "--json")
    assert code == 0 and last_json(out) == {"store": str(path), "rounds": []}


def test_show_table(store_path: Path) -> None:
    code, out, _ = run("show", "1", "--store", str(store_path))
    assert code == 0
    assert "(3) alice, bob, w[bold]3" in out  # worker ids are printed as text, never as rich markup
    assert "(1) w[bold]3" in out
    assert "metrics.grad_norm" in out and "round_000001.safetensors" in out
    code, out, _ = run("show", "2", "--store", str(store_path))
    assert code == 0
    assert "only 0 of 2 answered [min_clients=2]" in out and "(0) -" in out


def test_show_json(store_path: Path) -> None:
    code, out, _ = run("show", "2", "--store", str(store_path), "--json")
    assert code == 0
    assert RoundRecord(**last_json(out)) == FAILED  # type: ignore[arg-type]
    code, out, _ = run("show", "1", "--store", str(store_path), "--json")
    assert last_json(out)["participants"] == ["alice", "bob", "w[bold]3"]


def test_missing_round_is_a_usage_error(store_path: Path) -> None:
    code, out, err = run("show", "7", "--store", str(store_path), "--json")
    assert code == 2 and out == ""
    assert "round 7 is not in" in err and "rounds 1..2" in err and "Traceback" not in err
    code, _, err = run("show", "0", "--store", str(store_path))
    assert code == 2 and "x>=1" in err  # round 0 is the initial model, not a round


@pytest.mark.parametrize("command", [["list"], ["show", "1"]])
def test_missing_store_is_a_usage_error(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nowhere" / "store.db"
    code, out, err = run(*command, "--store", str(missing), "--json")
    assert code == 2 and out == ""
    assert f"no round store at {missing}" in err and "Traceback" not in err
    assert not missing.parent.exists()


def test_unreadable_store_is_a_usage_error(tmp_path: Path) -> None:
    junk = tmp_path / "store.db"
    junk.write_bytes(b"not a database" * 100)
    code, _, err = run("list", "--store", str(junk))
    assert code == 2 and str(junk) in err and "Traceback" not in err


def test_default_store_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("list")
    assert code == 2 and "runs/latest/store.db" in err
    with RoundStore(tmp_path / "runs" / "latest" / "store.db") as store:
        store.record_round(FAILED, None)
    code, out, _ = run("list", "--json")
    assert code == 0 and last_json(out)["store"] == "runs/latest/store.db"


def test_list_while_broker_holds_the_store(store_path: Path) -> None:
    with RoundStore(store_path) as writer:
        writer.record_round(RoundRecord(round=3, status="failed", started_at=0.0, duration_s=1.0), None)
        code, out, _ = run("list", "--store", str(store_path), "--json")
        records = last_json(out)["rounds"]
        assert code == 0 and isinstance(records, list) and [r["round"] for r in records] == [1, 2, 3]


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1_234_567, "1.2 MiB"), (2**50, "1024.0 TiB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text

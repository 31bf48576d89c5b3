"""Tests of the broker's round store (SQLite + safetensors checkpoints)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from federated.broker.errors import (
    DuplicateRoundError,
    ReadOnlyStoreError,
    RoundNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreNotFoundError,
    WorkerNotFoundError,
)
from federated.broker.store import SCHEMA_VERSION, RoundRecord, RoundStore


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(64).astype(np.float32),
        "layers.1.weight": rng.standard_normal((10, 64)).astype(np.float32),
        "step": np.array(seed, dtype=np.int64),
    }


def complete(n: int, **kw: object) -> RoundRecord:
    fields: dict[str, object] = {
        "round": n,
        "status": "complete",
        "started_at": 1_700_000_000.25 + n,
        "duration_s": 2.5,
        "overhead_s": 0.125,
        "participants": ("w1", "w2", "w3"),
        "survivors": ("w1", "w3"),
        "dropped": ("w2",),
        "num_samples": 640,
        "bytes_up": 123_456,
        "bytes_down": 654_321,
        "accuracy": 0.875,
        "loss": 0.3125,
        "train_loss": 0.25,
        "train_accuracy": 0.9,
        "epsilon": 1.5,
        "metrics": {"grad_norm": 3.25},
    }
    fields.update(kw)
    return RoundRecord(**fields)  # type: ignore[arg-type]


def failed(n: int) -> RoundRecord:
    return RoundRecord(
        round=n,
        status="failed",
        started_at=1_700_000_000.0,
        duration_s=30.0,
        participants=("w1", "w2"),
        dropped=("w1", "w2"),
        error="1 of 2 answered; min_clients=2",
    )


def assert_weights_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name, array in a.items():
        assert array.dtype == b[name].dtype and array.shape == b[name].shape
        assert array.tobytes() == b[name].tobytes(), name  # bit-exact, NaN payloads included


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RoundStore]:
    with RoundStore(tmp_path / "run" / "store.db") as s:
        yield s


def test_creates_directory_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    with RoundStore(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    with RoundStore(path) as again:  # reopening an existing store keeps it
        assert again.list_rounds() == []


def test_round_trip_records_and_checkpoints(store: RoundStore) -> None:
    weights = {n: make_weights(n) for n in (1, 2)}
    weights[2]["layers.0.bias"][3] = np.float32("nan")
    store.record_round(complete(1), weights[1])
    store.record_round(failed(2), None)
    store.record_round(complete(3, metrics={}, overhead_s=None, accuracy=None), weights[2])

    assert store.list_rounds() == [
        complete(1),
        failed(2),
        complete(3, metrics={}, overhead_s=None, accuracy=None),
    ]
    assert store.get_round(1) == complete(1)
    assert store.last_complete_round() == 3
    assert_weights_equal(store.load_checkpoint(1), weights[1])
    assert_weights_equal(store.load_checkpoint(3), weights[2])
    assert store.checkpoint_path(3).name == "round_000003.safetensors"
    loaded = store.load_checkpoint(1)["layers.0.bias"]
    loaded += 1  # callers (the aggregator) update the global model in place
    assert_weights_equal(store.load_checkpoint(1), weights[1])


def test_record_normalises_and_to_dict_is_json(store: RoundStore) -> None:
    rec = complete(
        1,
        participants=["w1"],
        num_samples=np.int64(7),
        accuracy=np.float32(0.5),
        metrics={"m": np.float64(2.0)},
    )
    assert rec.participants == ("w1",) and type(rec.num_samples) is int and rec.accuracy == 0.5
    d = rec.to_dict()
    assert d["participants"] == ["w1"] and d["metrics"] == {"m": 2.0}
    assert RoundRecord(**json.loads(json.dumps(d))) == rec
    store.record_round(rec, make_weights())
    assert store.get_round(1) == rec
    with pytest.raises(ValueError, match="status"):
        complete(1, status="done")
    with pytest.raises(ValueError, match="bytes_up"):
        complete(1, bytes_up=-1)


def test_nan_metric_column_reads_back_as_none(store: RoundStore) -> None:
    store.record_round(complete(1, loss=float("nan")), make_weights())
    assert store.get_round(1).loss is None


def test_strided_arrays_are_saved_by_value(store: RoundStore) -> None:
    base = np.arange(64, dtype=np.float32).reshape(8, 8)
    store.record_round(complete(1), {"t": base.T, "s": base[::2, 1::3]})
    got = store.load_checkpoint(1)
    np.testing.assert_array_equal(got["t"], base.T)
    np.testing.assert_array_equal(got["s"], base[::2, 1::3])


def test_failed_round_has_no_checkpoint(store: RoundStore) -> None:
    store.record_round(failed(1), None)
    assert not store.checkpoint_path(1).exists()
    assert store.last_complete_round() is None
    with pytest.raises(RoundNotFoundError, match="failed"):
        store.load_checkpoint(1)
    with pytest.raises(ValueError, match="no checkpoint"):
        store.record_round(failed(2), make_weights())
    with pytest.raises(ValueError, match="no weights"):
        store.record_round(complete(2), None)
    with pytest.raises(ValueError, match="initial model"):
        store.record_round(complete(0), make_weights())
    assert [r.round for r in store.list_rounds()] == [1]


def test_duplicate_round_is_refused_and_keeps_the_original(store: RoundStore) -> None:
    store.record_round(complete(1), make_weights(1))
    with pytest.raises(DuplicateRoundError, match="round 1 is already recorded"):
        store.record_round(complete(1, accuracy=0.1), make_weights(2))
    with pytest.raises(DuplicateRoundError):
        store.record_round(failed(1), None)
    assert store.get_round(1) == complete(1)
    assert_weights_equal(store.load_checkpoint(1), make_weights(1))
    assert isinstance(DuplicateRoundError("x"), StoreError)


def test_missing_round_and_checkpoint(store: RoundStore) -> None:
    with pytest.raises(RoundNotFoundError, match="round 9 is not in") as info:
        store.get_round(9)
    assert isinstance(info.value, KeyError) and str(info.value).startswith("round 9")  # no KeyError quotes
    with pytest.raises(RoundNotFoundError, match="never recorded"):
        store.load_checkpoint(9)
    with pytest.raises(ValueError):
        store.checkpoint_path(-1)


def test_initial_and_latest_weights(store: RoundStore) -> None:
    assert store.latest_weights() is None
    store.save_initial(make_weights(0))
    assert store.checkpoint_path(0).name == "round_000000.safetensors"
    n, w = store.latest_weights()  # type: ignore[misc]
    assert n == 0
    assert_weights_equal(w, make_weights(0))
    store.save_initial(make_weights(5))  # allowed until the first round is recorded
    store.record_round(complete(1), make_weights(1))
    store.record_round(failed(2), None)
    n, w = store.latest_weights()  # type: ignore[misc]
    assert n == 1
    assert_weights_equal(w, make_weights(1))
    with pytest.raises(StoreError, match="already has rounds"):
        store.save_initial(make_weights(0))
    assert_weights_equal(store.load_checkpoint(0), make_weights(5))


def test_missing_latest_checkpoint_is_an_error_not_a_silent_fallback(store: RoundStore) -> None:
    store.save_initial(make_weights(0))
    store.record_round(complete(1), make_weights(1))
    store.checkpoint_path(1).unlink()
    with pytest.raises(RoundNotFoundError):
        store.latest_weights()


def test_checkpoint_write_is_atomic(store: RoundStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail at the rename, after the temp file is fully written: nothing may appear under the final name,
    # no temp file may be left behind, and the round's row must not commit.
    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.record_round(complete(1), make_weights())
    monkeypatch.undo()
    ckpt_dir = store.checkpoint_path(1).parent
    assert sorted(p.name for p in ckpt_dir.iterdir()) == []
    assert store.list_rounds() == []
    store.record_round(complete(1), make_weights())  # the round can then be recorded normally
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["round_000001.safetensors"]


def test_row_failure_takes_back_the_checkpoint(store: RoundStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import federated.broker.store as store_module

    monkeypatch.setattr(store_module, "_INSERT_ROUND", "INSERT INTO no_such_table VALUES (1)")
    with pytest.raises(StoreError, match="record round 1"):
        store.record_round(complete(1), make_weights())
    assert not store.checkpoint_path(1).exists()
    assert store.list_rounds() == []


def test_checkpoint_file_mode_follows_the_database(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with RoundStore(db) as s:
        s.record_round(complete(1), make_weights())
        assert stat.S_IMODE(s.checkpoint_path(1).stat().st_mode) == stat.S_IMODE(db.stat().st_mode)
    db.chmod(0o600)
    with RoundStore(db) as s:
        s.record_round(complete(2), make_weights())
        assert stat.S_IMODE(s.checkpoint_path(2).stat().st_mode) == 0o600


def test_readonly_missing_file_errors_clearly(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "store.db"
    with pytest.raises(StoreNotFoundError, match=f"no round store at {path}") as info:
        RoundStore(path, readonly=True)
    assert isinstance(info.value, FileNotFoundError)
    assert not path.parent.exists()  # read-only creates nothing


def test_readonly_refuses_writes_and_leaves_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with RoundStore(path) as s:
        s.record_round(complete(1), make_weights())
    before = path.read_bytes()
    with RoundStore(path, readonly=True) as ro:
        assert ro.readonly and ro.get_round(1) == complete(1)
        assert_weights_equal(ro.load_checkpoint(1), make_weights())
        writes: list[Callable[[], object]] = [
            lambda: ro.set_meta("k", 1),
            lambda: ro.record_round(complete(2), make_weights()),
            lambda: ro.upsert_worker("w", seen_at=1.0),
            lambda: ro.save_initial(make_weights()),
        ]
        for write in writes:
            with pytest.raises(ReadOnlyStoreError):
                write()
    assert path.read_bytes() == before


def test_readonly_sees_concurrent_writer_commits(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with RoundStore(path) as writer, RoundStore(path, readonly=True) as reader:
        assert reader.list_rounds() == []
        writer.record_round(complete(1), make_weights())
        assert [r.round for r in reader.list_rounds()] == [1]
        # A reader mid-transaction (a slow `fl rounds list`) must neither block the writer nor see
        # half of its work: WAL gives it a snapshot.
        snapshot = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        snapshot.execute("BEGIN")
        assert snapshot.execute("SELECT count(*) FROM rounds").fetchone()[0] == 1
        writer.record_round(failed(2), None)
        assert snapshot.execute("SELECT count(*) FROM rounds").fetchone()[0] == 1
        snapshot.execute("COMMIT")
        snapshot.close()
        assert [r.round for r in reader.list_rounds()] == [1, 2]
        assert reader.last_complete_round() == 1


@pytest.mark.network  # the reader is a process of its own
def test_reader_in_another_process_while_broker_holds_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    code = textwrap.dedent(f"""
        import json
        from federated.broker.store import RoundStore
        with RoundStore({str(path)!r}, readonly=True) as s:
            print(json.dumps([r.to_dict() for r in s.list_rounds()]))
    """)
    with RoundStore(path) as writer:
        writer.record_round(complete(1), make_weights())
        writer.record_round(failed(2), None)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    assert [RoundRecord(**d) for d in json.loads(out)] == [complete(1), failed(2)]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    RoundStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    for readonly in (False, True):
        with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
            RoundStore(path, readonly=readonly)


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    for readonly in (False, True):
        with pytest.raises(StoreError, match="junk.db"):
            RoundStore(junk, readonly=readonly)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a round store"):
        RoundStore(other)


def test_meta_round_trip(store: RoundStore, tmp_path: Path) -> None:
    assert store.get_meta("config") is None
    config = {"num_rounds": 5, "lr": 0.05, "clients": ["a", "b"], "nested": {"x": None}}
    store.set_meta("config", config)
    store.set_meta("seed", 42)
    store.set_meta("seed", 43)
    assert store.get_meta("config") == config and store.get_meta("seed") == 43
    with pytest.raises(TypeError):
        store.set_meta("bad", object())
    with RoundStore(store.path, readonly=True) as ro:
        assert ro.get_meta("seed") == 43


def test_workers(store: RoundStore) -> None:
    store.upsert_worker("w2", num_samples=100, seen_at=10.0)
    store.upsert_worker("w1", seen_at=11.0)
    store.upsert_worker("w2", seen_at=20.0)  # num_samples None keeps the known count
    store.upsert_worker("w2", seen_at=15.0)  # late message: last_seen never goes back
    for field in ("rounds_selected", "rounds_selected", "rounds_completed", "rounds_dropped"):
        store.count_worker("w2", field)
    assert store.list_workers() == [
        {
            "worker_id": "w1",
            "num_samples": None,
            "first_seen": 11.0,
            "last_seen": 11.0,
            "rounds_selected": 0,
            "rounds_completed": 0,
            "rounds_dropped": 0,
        },
        {
            "worker_id": "w2",
            "num_samples": 100,
            "first_seen": 10.0,
            "last_seen": 20.0,
            "rounds_selected": 2,
            "rounds_completed": 1,
            "rounds_dropped": 1,
        },
    ]
    with pytest.raises(ValueError, match="rounds_selected"):
        store.count_worker("w1", "first_seen")
    with pytest.raises(WorkerNotFoundError, match="ghost"):
        store.count_worker("ghost", "rounds_selected")


def test_closed_store_raises_store_error(tmp_path: Path) -> None:
    s = RoundStore(tmp_path / "store.db")
    s.close()
    s.close()
    with pytest.raises(StoreError):
        s.list_rounds()


def test_a_version_2_store_is_read_as_it_is_and_migrated_when_opened_for_writing(tmp_path: Path) -> None:
    import sqlite3

    from federated.broker import store as store_module

    path = tmp_path / "old.db"
    # Version 2's rounds table: today's without the federated-evaluation columns.
    old_schema = ["\n".join(line.replace("NOT NULL,  -- JSON list of worker ids suspected",
                                          "NOT NULL   -- JSON list of worker ids suspected")
                             for line in statement.splitlines() if "fed_" not in line)
                  for statement in store_module._SCHEMA]
    assert "fed_loss" not in old_schema[2]
    conn = sqlite3.connect(path)
    for statement in old_schema:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (2, 0.0)")
    conn.execute("INSERT INTO rounds (round, status, started_at, duration_s, participants, survivors, dropped, "
                 "num_samples, bytes_up, bytes_down, metrics, suspects) VALUES "
                 "(1, 'failed', 0.0, 1.0, '[]', '[]', '[]', 0, 0, 0, '{}', '[]')")
    conn.commit()
    conn.close()
    with RoundStore(path, readonly=True) as reader:  # a reader never writes: the new columns read as None
        (record,) = reader.list_rounds()
        assert record.round == 1 and record.fed_accuracy is None
    with RoundStore(path) as writer:
        updated = writer.record_evaluation(1, loss=0.5, accuracy=0.75, metrics={"fed_workers": 2.0})
        assert (updated.fed_loss, updated.fed_accuracy, updated.metrics) == (0.5, 0.75, {"fed_workers": 2.0})
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == store_module.SCHEMA_VERSION
    conn.close()

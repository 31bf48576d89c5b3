"""The broker's round store: one SQLite file plus a safetensors checkpoint per complete round.

On disk, beside the database file::

    store.db                                 schema_version, meta, rounds, workers (WAL mode)
    checkpoints/round_000000.safetensors     the initial model (``save_initial``)
    checkpoints/round_NNNNNN.safetensors     the global model after complete round N
    checkpoints/state_NNNNNN.safetensors     array state to resume from after round N (server optimizer
                                             moments); only the newest one is kept

Everything a restarted broker needs to continue is written with each round, in the same transaction as
its row: the ``resume`` meta entry (JSON: round counters, RNG and selection state, accountant state, the
name of the array-state file) and the array-state file itself, which reaches its final name before the
row commits, like the checkpoint. So after a crash the store is at the end of some complete or failed
round, and :meth:`RoundStore.load_resume` returns exactly that round's state.

A complete round's checkpoint reaches its final name (fsynced, then renamed over) before the round's row
commits, so every row marked "complete" has its checkpoint; a crash in between leaves at most an orphan
checkpoint without a row, which recording that round again overwrites. With ``synchronous=NORMAL`` a
*process* crash loses nothing committed; a power cut may roll back the last few commits, never corrupt.

One writer (the broker) and any number of read-only readers (``fl rounds``) may use a store at once.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import safetensors.numpy

from federated.broker.card import model_card
from federated.broker.errors import (
    DuplicateRoundError,
    ReadOnlyStoreError,
    RoundNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreNotFoundError,
    WorkerNotFoundError,
)
from federated.durable import write_atomic

__all__ = ["ROUND_STATUSES", "SCHEMA_VERSION", "WORKER_COUNTERS", "RoundRecord", "RoundStore"]

SCHEMA_VERSION = 3
ROUND_STATUSES = ("complete", "failed")
WORKER_COUNTERS = ("rounds_selected", "rounds_completed", "rounds_dropped")
CHECKPOINT_DIR = "checkpoints"
_BUSY_TIMEOUT_S = 5.0

_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE rounds (
        round          INTEGER PRIMARY KEY CHECK (round >= 1),
        status         TEXT    NOT NULL CHECK (status IN ('complete', 'failed')),
        started_at     REAL    NOT NULL,
        duration_s     REAL    NOT NULL,
        overhead_s     REAL,
        participants   TEXT    NOT NULL,  -- JSON list of worker ids
        survivors      TEXT    NOT NULL,
        dropped        TEXT    NOT NULL,
        num_samples    INTEGER NOT NULL,
        bytes_up       INTEGER NOT NULL,
        bytes_down     INTEGER NOT NULL,
        accuracy       REAL,
        loss           REAL,
        train_loss     REAL,
        train_accuracy REAL,
        epsilon        REAL,
        error          TEXT,
        metrics        TEXT    NOT NULL,  -- JSON object
        suspects       TEXT    NOT NULL,  -- JSON list of worker ids suspected of being Byzantine
        fed_loss       REAL,              -- federated evaluation of this round's model (version 3)
        fed_accuracy   REAL
    )""",
    """CREATE TABLE workers (
        worker_id        TEXT    PRIMARY KEY,
        num_samples      INTEGER,
        first_seen       REAL    NOT NULL,
        last_seen        REAL    NOT NULL,
        rounds_selected  INTEGER NOT NULL DEFAULT 0,
        rounds_completed INTEGER NOT NULL DEFAULT 0,
        rounds_dropped   INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
)

#: Columns added since version 2, each with the statement that adds it to an older store.
_MIGRATIONS = {3: ("ALTER TABLE rounds ADD COLUMN fed_loss REAL", "ALTER TABLE rounds ADD COLUMN fed_accuracy REAL")}
_SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_WORKER_COLUMNS = ("worker_id", "num_samples", "first_seen", "last_seen", *WORKER_COUNTERS)
_UPSERT_WORKER = """
    INSERT INTO workers (worker_id, num_samples, first_seen, last_seen) VALUES (?, ?, ?, ?)
    ON CONFLICT (worker_id) DO UPDATE SET
        num_samples = COALESCE(excluded.num_samples, workers.num_samples),
        last_seen = MAX(workers.last_seen, excluded.last_seen)"""
# Column names cannot be bound parameters, so each counter gets its own constant statement.
_COUNT_WORKER = {c: f"UPDATE workers SET {c} = {c} + 1 WHERE worker_id = ?" for c in WORKER_COUNTERS}


def _opt_float(x: object) -> float | None:
    return None if x is None else float(x)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RoundRecord:
    """What the store keeps about one round. Times are unix seconds, durations seconds, sizes bytes.

    Numbers are coerced on construction (numpy scalars become Python ones, lists become tuples) so a
    record compares equal to itself after a round trip. NaN in a float column is stored as NULL and
    reads back as None. Raises ValueError for an unknown status or a negative round/count.
    """

    round: int
    status: str
    started_at: float
    duration_s: float
    overhead_s: float | None = None
    participants: tuple[str, ...] = ()
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    num_samples: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    accuracy: float | None = None
    loss: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    epsilon: float | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict, hash=False)
    suspects: tuple[str, ...] = ()
    fed_loss: float | None = None
    fed_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.status not in ROUND_STATUSES:
            raise ValueError(f"status must be one of {ROUND_STATUSES}, not {self.status!r}")
        set_ = object.__setattr__  # frozen: normalise in place once, at construction
        for name in ("round", "num_samples", "bytes_up", "bytes_down"):
            value = int(getattr(self, name))
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            set_(self, name, value)
        set_(self, "started_at", float(self.started_at))
        set_(self, "duration_s", float(self.duration_s))
        for name in ("overhead_s", "accuracy", "loss", "train_loss", "train_accuracy", "epsilon", "fed_loss",
                     "fed_accuracy"):
            set_(self, name, _opt_float(getattr(self, name)))
        for name in ("participants", "survivors", "dropped", "suspects"):
            set_(self, name, tuple(str(w) for w in getattr(self, name)))
        set_(self, "metrics", {str(k): float(v) for k, v in self.metrics.items()})

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types (tuples become lists); ``RoundRecord(**d)`` inverts it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["metrics"] = dict(self.metrics)
        return out


_ROUND_COLUMNS = tuple(f.name for f in fields(RoundRecord))
_JSON_COLUMNS = frozenset({"participants", "survivors", "dropped", "metrics", "suspects"})
_INSERT_ROUND = (
    f"INSERT INTO rounds ({', '.join(_ROUND_COLUMNS)}) VALUES ({', '.join('?' * len(_ROUND_COLUMNS))})"
)


def _record_to_row(rec: RoundRecord) -> tuple[object, ...]:
    row: list[object] = []
    for name in _ROUND_COLUMNS:
        value = getattr(rec, name)
        if name in _JSON_COLUMNS:
            value = json.dumps(list(value) if isinstance(value, tuple) else value)
        elif isinstance(value, float) and math.isnan(value):
            value = None  # SQLite would store NULL anyway; say so explicitly
        row.append(value)
    return tuple(row)


def _row_to_record(row: Sequence[Any]) -> RoundRecord:
    values: dict[str, Any] = {
        name: json.loads(str(value)) if name in _JSON_COLUMNS else value
        for name, value in zip(_ROUND_COLUMNS, row, strict=True)
    }
    return RoundRecord(**values)


def _contiguous(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # safetensors reads raw memory from the data pointer, so a strided view would be saved wrongly.
    out: dict[str, np.ndarray] = {}
    for name, array in weights.items():
        if not isinstance(name, str) or not isinstance(array, np.ndarray):
            raise TypeError(
                f"weights must map str to numpy arrays; got {type(name).__name__} -> {type(array).__name__}"
            )
        # (not np.ascontiguousarray: it turns 0-d arrays into 1-d ones)
        out[name] = array if array.flags.c_contiguous else array.copy(order="C")
    return out


class RoundStore:
    """Rounds, workers, run metadata and checkpoints of one broker run. Thread-safe; one connection.

    ``RoundStore(path)`` creates the directory, file and schema if needed. ``readonly=True`` never writes
    and works while a broker holds the store open. Raises StoreNotFoundError (read-only and no file),
    SchemaVersionError (store from a newer version) or StoreError (not a round store, unreadable).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self._path = Path(path)
        self._readonly = readonly
        self._checkpoint_dir = self._path.parent / CHECKPOINT_DIR
        self._lock = threading.RLock()  # the broker may hand the store between its threads
        self._conn = self._connect()
        try:
            with self._sql_errors("open"):
                self._ensure_schema()
            # Checkpoints are exactly as private as the database file they belong to.
            self._file_mode = self._path.stat().st_mode & 0o666
        except BaseException:
            self._conn.close()
            raise

    # -- opening ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            if self._readonly:
                if not self._path.is_file():
                    raise StoreNotFoundError(f"no round store at {self._path}")
                conn = sqlite3.connect(
                    self._path.resolve().as_uri() + "?mode=ro",
                    uri=True,
                    timeout=_BUSY_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute("PRAGMA query_only = ON")
            else:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
                )
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":  # e.g. a network file system; readers would block the broker
                    raise StoreError(f"cannot use WAL journal mode for {self._path} (got {mode!r})")
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open round store {self._path}: {exc}") from exc
            raise
        return conn

    def _ensure_schema(self) -> None:
        version = self._schema_version()
        if version is None:
            if self._readonly:
                raise StoreError(f"{self._path} is not a round store (no schema)")
            with self._transaction():
                if self._schema_version() is None:  # another opener may have won the race
                    tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                    if tables:
                        raise StoreError(f"{self._path} is an SQLite file but not a round store")
                    for statement in _SCHEMA:
                        self._conn.execute(statement)
                    self._conn.execute(
                        "INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION, time.time())
                    )
        elif version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self._path} has schema version {version}; this code reads up to {SCHEMA_VERSION}. "
                "Upgrade federated to open it."
            )
        elif version < SCHEMA_VERSION and not self._readonly:
            with self._transaction():
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS.get(target, ()):
                        self._conn.execute(statement)
                self._conn.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION, time.time()))
        # A reader of an older store selects NULL for the columns it lacks (see _select_rounds).
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(rounds)")}
        self._select_rounds = "SELECT " + ", ".join(
            c if c in present else f"NULL AS {c}" for c in _ROUND_COLUMNS) + " FROM rounds"

    def _schema_version(self) -> int | None:
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if exists is None:
            return None
        version = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return None if version is None else int(version)

    # -- plumbing ----------------------------------------------------------------------------------

    @contextmanager
    def _sql_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"round store {self._path}: cannot {action}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so a busy store fails here, before any work.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _require_writable(self) -> None:
        if self._readonly:
            raise ReadOnlyStoreError(f"round store {self._path} is open read-only")

    def _write_checkpoint(self, n: int, weights: dict[str, np.ndarray], final: Path | None = None,
                          metadata: dict[str, str] | None = None) -> Path:
        """Write round n's checkpoint (or another tensor file, ``final``) durably: see
        :func:`federated.durable.write_atomic`. ``metadata``: its model card (default ``{"round": n}``)."""
        data = safetensors.numpy.save(_contiguous(weights), metadata=metadata or {"round": str(n)})
        final = final or self.checkpoint_path(n)
        self._checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # The temp name (".<name>.<random>.tmp") never matches round_*.safetensors, so a crash leaves no
        # half file under that name.
        write_atomic(final, data, mode=self._file_mode)
        return final

    # -- properties and lifetime --------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    @property
    def readonly(self) -> bool:
        """True if opened with ``readonly=True``: every write raises ReadOnlyStoreError."""
        return self._readonly

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- meta -------------------------------------------------------------------------------------

    def set_meta(self, key: str, value: object) -> None:
        """Store a JSON-serialisable value under key (run config, seed, RNG state, ...).

        Raises TypeError if value is not JSON-serialisable, ReadOnlyStoreError if read-only.
        """
        self._require_writable()
        text = json.dumps(value)
        with self._lock, self._sql_errors(f"set meta {key!r}"):
            self._conn.execute(_SET_META, (key, text))

    def get_meta(self, key: str) -> object | None:
        """The value stored under key, or None if there is none."""
        with self._lock, self._sql_errors(f"get meta {key!r}"):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # -- rounds -----------------------------------------------------------------------------------

    def record_round(self, rec: RoundRecord, weights: dict[str, np.ndarray] | None, *,
                     resume: Mapping[str, Any] | None = None, state: Mapping[str, np.ndarray] | None = None) -> None:
        """Record a finished round once; a complete round's weights become its checkpoint.

        ``resume`` (JSON-serialisable) and ``state`` (named arrays) are what a restarted broker needs to
        continue after this round; they are committed together with the round (see the module docstring)
        and read back by :meth:`load_resume`.

        Raises ValueError if a complete round has no weights, a failed round has some, or the round is
        0 (the initial model, see ``save_initial``); DuplicateRoundError if the round is already recorded;
        TypeError if ``resume`` is not JSON-serialisable; OSError if a file cannot be written (the round
        is then not recorded).
        """
        self._require_writable()
        if rec.round < 1:
            raise ValueError("round numbers start at 1; round 0 is the initial model (save_initial)")
        if rec.status == "complete" and weights is None:
            raise ValueError(f"round {rec.round} is complete but has no weights to checkpoint")
        if rec.status == "failed" and weights is not None:
            raise ValueError(f"round {rec.round} failed; failed rounds store no checkpoint")
        row = _record_to_row(rec)
        resume_text = None
        if resume is not None:
            state_file = self._state_path(rec.round).name if state else None
            resume_text = json.dumps({**resume, "round": rec.round, "state_file": state_file})
        written: list[Path] = []
        with self._lock, self._sql_errors(f"record round {rec.round}"):
            try:
                with self._transaction():
                    if self._conn.execute("SELECT 1 FROM rounds WHERE round = ?", (rec.round,)).fetchone():
                        raise DuplicateRoundError(
                            f"round {rec.round} is already recorded in {self._path}; a round is recorded once"
                        )
                    if weights is not None:
                        written.append(self._write_checkpoint(rec.round, weights, metadata=self._card(rec)))
                    if resume_text is not None and state:
                        written.append(self._write_checkpoint(rec.round, dict(state), self._state_path(rec.round)))
                    self._conn.execute(_INSERT_ROUND, row)
                    if resume_text is not None:
                        self._conn.execute(_SET_META, ("resume", resume_text))
            except BaseException:
                for path in written:  # no row owns them (we checked), so they are ours to take back
                    path.unlink(missing_ok=True)
                raise
        if resume_text is not None:
            self._drop_old_state(keep=self._state_path(rec.round) if state else None)

    def record_evaluation(self, n: int, *, loss: float | None, accuracy: float | None,
                          metrics: Mapping[str, float]) -> RoundRecord:
        """Attach the federated evaluation of round ``n``'s model (it arrives after the round is recorded:
        see :class:`~federated.config.EvaluationConfig`): its loss and accuracy, and ``metrics`` merged
        into the round's metrics. Returns the updated record. Raises RoundNotFoundError if round ``n`` is
        not recorded."""
        self._require_writable()
        with self._lock, self._sql_errors(f"record the evaluation of round {n}"), self._transaction():
            row = self._conn.execute("SELECT metrics FROM rounds WHERE round = ?", (n,)).fetchone()
            if row is None:
                raise RoundNotFoundError(f"round {n} is not in {self._path}")
            merged = {**json.loads(row[0]), **{str(k): float(v) for k, v in metrics.items()}}
            self._conn.execute("UPDATE rounds SET fed_loss = ?, fed_accuracy = ?, metrics = ? WHERE round = ?",
                               (_opt_float(loss), _opt_float(accuracy), json.dumps(merged), n))
        return self.get_round(n)

    def _card(self, rec: RoundRecord) -> dict[str, str]:
        """The model card a complete round's checkpoint carries (see :mod:`federated.broker.card`)."""
        model, config = self._meta_unlocked("model"), self._meta_unlocked("config")
        return model_card(rec.round, model=model if isinstance(model, dict) else None,
                          config=config if isinstance(config, dict) else None,
                          accuracy=rec.accuracy, loss=rec.loss, epsilon=rec.epsilon)

    def _meta_unlocked(self, key: str) -> object | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _state_path(self, n: int) -> Path:
        return self._checkpoint_dir / f"state_{n:06d}.safetensors"

    def _drop_old_state(self, keep: Path | None) -> None:
        """Remove array-state files other than ``keep``: only the newest round's state is ever read."""
        for path in self._checkpoint_dir.glob("state_*.safetensors"):
            if path != keep:
                path.unlink(missing_ok=True)

    def load_resume(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """``(resume, state)`` as recorded with the newest round, or None if no round recorded any.

        ``resume["round"]`` is that round's number. Raises StoreError if the state file it names is
        missing or unreadable (resuming without it would silently reset the server optimizer).
        """
        raw = self.get_meta("resume")
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise StoreError(f"{self._path}: the resume state is not a JSON object")
        state: dict[str, np.ndarray] = {}
        name = raw.get("state_file")
        if name is not None:
            path = self._checkpoint_dir / str(name)
            try:
                state = {k: np.array(v) for k, v in safetensors.numpy.load(path.read_bytes()).items()}
            except FileNotFoundError:
                raise StoreError(f"{self._path}: resume state file {path} is missing") from None
            except Exception as exc:  # safetensors raises its own error types for corrupt headers
                raise StoreError(f"resume state file {path} is unreadable: {exc}") from exc
        return raw, state

    def list_rounds(self) -> list[RoundRecord]:
        """Every recorded round, oldest first."""
        with self._lock, self._sql_errors("list rounds"):
            rows = self._conn.execute(self._select_rounds + " ORDER BY round").fetchall()
        return [_row_to_record(r) for r in rows]

    def get_round(self, n: int) -> RoundRecord:
        """Round n's record. Raises RoundNotFoundError (a KeyError) if it was never recorded."""
        with self._lock, self._sql_errors(f"get round {n}"):
            row = self._conn.execute(self._select_rounds + " WHERE round = ?", (n,)).fetchone()
        if row is None:
            raise RoundNotFoundError(f"round {n} is not in {self._path}")
        return _row_to_record(row)

    def last_complete_round(self) -> int | None:
        """The highest complete round number, or None if no round has completed."""
        with self._lock, self._sql_errors("find the last complete round"):
            n = self._conn.execute("SELECT MAX(round) FROM rounds WHERE status = 'complete'").fetchone()[0]
        return None if n is None else int(n)

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_path(self, n: int) -> Path:
        """Where round n's checkpoint lives (whether or not it exists). Raises ValueError if n < 0."""
        if n < 0:
            raise ValueError(f"round numbers are >= 0, got {n}")
        return self._checkpoint_dir / f"round_{n:06d}.safetensors"

    def save_initial(self, weights: dict[str, np.ndarray]) -> None:
        """Checkpoint the initial model as round 0. Raises StoreError once any round is recorded."""
        self._require_writable()
        with self._lock, self._sql_errors("save the initial model"), self._transaction():
            if self._conn.execute("SELECT 1 FROM rounds LIMIT 1").fetchone():
                raise StoreError(
                    f"{self._path} already has rounds; the initial model they started from cannot change"
                )
            self._write_checkpoint(0, weights)

    def load_checkpoint(self, n: int) -> dict[str, np.ndarray]:
        """Round n's weights as writable arrays, bit-exact as saved.

        Raises RoundNotFoundError if there is no checkpoint (never recorded, or the round failed) and
        StoreError if the file is unreadable.
        """
        path = self.checkpoint_path(n)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            hint = ""
            if n > 0:
                try:
                    if self.get_round(n).status == "failed":
                        hint = " (the round failed; failed rounds have no checkpoint)"
                except RoundNotFoundError:
                    hint = " (the round was never recorded)"
            raise RoundNotFoundError(f"no checkpoint for round {n} at {path}{hint}") from None
        try:
            tensors = safetensors.numpy.load(data)
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise StoreError(f"checkpoint {path} is unreadable: {exc}") from exc
        # load() returns read-only views over the file's bytes; the aggregator updates in place.
        return {name: np.array(array) for name, array in tensors.items()}

    def latest_weights(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """(round, weights) of the newest complete round, else round 0's, else None.

        Raises RoundNotFoundError if the newest complete round's checkpoint has gone missing, rather
        than silently resuming from an older model.
        """
        n = self.last_complete_round()
        if n is None:
            if not self.checkpoint_path(0).is_file():
                return None
            n = 0
        return n, self.load_checkpoint(n)

    # -- workers ----------------------------------------------------------------------------------

    def upsert_worker(self, worker_id: str, *, num_samples: int | None = None, seen_at: float) -> None:
        """Note that a worker was seen at seen_at (unix seconds); first_seen is set once.

        num_samples=None keeps the previously known count. Raises ReadOnlyStoreError if read-only.
        """
        self._require_writable()
        samples = None if num_samples is None else int(num_samples)
        with self._lock, self._sql_errors(f"update worker {worker_id!r}"):
            self._conn.execute(_UPSERT_WORKER, (worker_id, samples, float(seen_at), float(seen_at)))

    def count_worker(self, worker_id: str, field: str) -> None:
        """Add one to a worker's counter: one of WORKER_COUNTERS.

        Raises ValueError for another field name, WorkerNotFoundError if the worker was never upserted.
        """
        self._require_writable()
        statement = _COUNT_WORKER.get(field)
        if statement is None:
            raise ValueError(f"field must be one of {WORKER_COUNTERS}, not {field!r}")
        with self._lock, self._sql_errors(f"count {field} for worker {worker_id!r}"):
            updated = self._conn.execute(statement, (worker_id,)).rowcount
        if updated == 0:
            raise WorkerNotFoundError(f"worker {worker_id!r} is not in {self._path}; upsert it first")

    def list_workers(self) -> list[dict[str, Any]]:
        """Every known worker as a dict of worker_id, num_samples, first_seen, last_seen and counters."""
        with self._lock, self._sql_errors("list workers"):
            rows = self._conn.execute(
                f"SELECT {', '.join(_WORKER_COLUMNS)} FROM workers ORDER BY worker_id"
            ).fetchall()
        return [dict(zip(_WORKER_COLUMNS, row, strict=True)) for row in rows]

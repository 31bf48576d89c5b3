"""Enrolment: the broker's record of which workers it accepts, and the view a running broker keeps of it.

In the broker's keys directory::

    enrolled/<worker_id>.pub            worker-public + "enrolled_at", one per enrolled worker
    revoked/<worker_id>.<unix ms>.pub   revoked workers, moved here for the record; never read back

``fl keys enrol`` copies a worker's ``<worker_id>.pub`` (:mod:`federated.keys.worker`) into ``enrolled/``;
:class:`Enrolment` is what the broker's CURVE authenticator asks. The file format and its checks are
:mod:`federated.keys.format`'s.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from federated.keys.format import (
    PUBLIC_SUFFIX,
    KeyFileError,
    checked_worker_id,
    dump,
    holds_secret,
    identity_public_field,
    load_document,
    make_dir,
    time_field,
    worker_id_field,
    write_key_file,
    z85_field,
)
from federated.keys.worker import fingerprint

__all__ = ["ENROLLED_DIR", "REVOKED_DIR", "EnrolledWorker", "Enrolment", "enrol_worker", "list_enrolled",
           "revoke_worker"]

log = logging.getLogger(__name__)

ENROLLED_DIR = "enrolled"
REVOKED_DIR = "revoked"

_FIX_ENROLLED = "move the file out of enrolled/ and enrol the worker again with `fl keys enrol`"


@dataclass(frozen=True)
class EnrolledWorker:
    """A worker the broker accepts: its id, CURVE public key (Z85), Ed25519 public key (raw 32 bytes) and
    when it was enrolled (unix seconds)."""

    worker_id: str
    curve_public: bytes
    identity_public: bytes
    enrolled_at: float

    @property
    def fingerprint(self) -> str:
        """Short digest of both public keys, to compare by eye with what ``fl keys worker`` printed."""
        return fingerprint(self.curve_public, self.identity_public)


def _load_worker_public(path: Path, fix: str, *, enrolled: bool) -> EnrolledWorker:
    doc = load_document(path, "worker-public", fix=fix)
    secret = holds_secret(doc)
    worker_id = worker_id_field(path, doc, fix, secret=secret)
    curve_public = z85_field(path, doc, "curve_public", fix, secret=secret)
    identity_public = identity_public_field(path, doc, fix, secret=secret)
    enrolled_at = time_field(path, doc, "enrolled_at", fix) if enrolled else 0.0
    if enrolled and path.name != f"{worker_id}{PUBLIC_SUFFIX}":
        raise KeyFileError(f"{path} holds the key of worker {worker_id!r}, so it must be named "
                           f"{worker_id}{PUBLIC_SUFFIX}; {fix}")
    return EnrolledWorker(worker_id, curve_public, identity_public, enrolled_at)


def _enrolled_files(keys_dir: Path) -> list[Path]:
    directory = keys_dir / ENROLLED_DIR
    if not directory.is_dir():
        return []
    # Our temporary files are ".<name>.<random>.tmp": never read half-written ones.
    return sorted(p for p in directory.iterdir()
                  if p.name.endswith(PUBLIC_SUFFIX) and not p.name.startswith("."))


def _read_enrolled(keys_dir: Path, *, strict: bool) -> dict[str, EnrolledWorker]:
    """Every enrolled worker by id. Strict: the first bad file raises. Lenient (a running broker): bad files,
    and every file of a CURVE key enrolled twice, are left out with a warning, so they admit nobody."""
    by_id: dict[str, EnrolledWorker] = {}
    for path in _enrolled_files(keys_dir):
        try:
            entry = _load_worker_public(path, _FIX_ENROLLED, enrolled=True)
        except KeyFileError as exc:
            if strict:
                raise
            log.warning("ignoring an enrolled key file: %s", exc)
            continue
        by_id[entry.worker_id] = entry
    owners: dict[bytes, list[str]] = {}
    for entry in by_id.values():
        owners.setdefault(entry.curve_public, []).append(entry.worker_id)
    for ids in owners.values():
        if len(ids) > 1:
            message = (f"{keys_dir / ENROLLED_DIR}: workers {', '.join(sorted(ids))} are enrolled with the "
                       f"same CURVE key; {_FIX_ENROLLED}")
            if strict:
                raise KeyFileError(message)
            log.warning("ignoring them all: %s", message)
            for worker_id in ids:
                del by_id[worker_id]
    return by_id


def _require_keys_dir(keys_dir: Path) -> None:
    if not keys_dir.is_dir():
        raise KeyFileError(f"{keys_dir} is not a directory; create the broker keys first with "
                           f"`fl keys broker --keys-dir {shlex.quote(str(keys_dir))}`, "
                           f"or pass the right --keys-dir")


def enrol_worker(keys_dir: Path, public_file: Path) -> EnrolledWorker:
    """Record a worker's public key file (from ``fl keys worker``) in ``keys_dir/enrolled/``.

    Enrolling the same keys again returns the existing record. Raises ``KeyFileError`` if the file is not a
    valid worker public key file, if the worker id is enrolled with other keys (revoke it first), or if its
    CURVE or identity key is already enrolled under another id.
    """
    keys_dir, public_file = Path(keys_dir), Path(public_file)
    _require_keys_dir(keys_dir)
    fix = "enrol the ID.pub file that `fl keys worker` made (copy it again if it was damaged)"
    new = _load_worker_public(public_file, fix, enrolled=False)
    current = _read_enrolled(keys_dir, strict=True)
    existing = current.get(new.worker_id)
    if existing is not None:
        if (existing.curve_public, existing.identity_public) == (new.curve_public, new.identity_public):
            return existing
        raise KeyFileError(
            f"worker {new.worker_id!r} is already enrolled in {keys_dir} with different keys (from "
            f"{public_file}); if the worker's keys were replaced, run `fl keys revoke {new.worker_id} "
            f"--keys-dir {shlex.quote(str(keys_dir))}` first")
    for other in current.values():
        if other.curve_public == new.curve_public or other.identity_public == new.identity_public:
            raise KeyFileError(
                f"{public_file}: its keys are already enrolled as worker {other.worker_id!r}; every worker "
                f"needs its own keys (create them with `fl keys worker --client-id {new.worker_id} ...`)")
    entry = EnrolledWorker(new.worker_id, new.curve_public, new.identity_public, enrolled_at=time.time())
    make_dir(keys_dir / ENROLLED_DIR)
    write_key_file(keys_dir / ENROLLED_DIR / f"{entry.worker_id}{PUBLIC_SUFFIX}",
                   dump({"kind": "worker-public", "worker_id": entry.worker_id,
                         "curve_public": entry.curve_public.decode(),
                         "identity_public": entry.identity_public.hex(),
                         "enrolled_at": entry.enrolled_at}),
                   secret=False, force=False)
    return entry


def revoke_worker(keys_dir: Path, worker_id: str) -> EnrolledWorker:
    """Withdraw a worker's enrolment: its file moves to ``keys_dir/revoked/``. Returns what was enrolled.

    Raises ``ValueError`` for an invalid id and ``KeyFileError`` if the worker is not enrolled.
    """
    keys_dir, worker_id = Path(keys_dir), checked_worker_id(worker_id)
    _require_keys_dir(keys_dir)
    path = keys_dir / ENROLLED_DIR / f"{worker_id}{PUBLIC_SUFFIX}"
    if not path.is_file():
        raise KeyFileError(f"worker {worker_id!r} is not enrolled in {keys_dir} (no {path}); "
                           f"`fl keys list --keys-dir {shlex.quote(str(keys_dir))}` shows who is")
    entry = _load_worker_public(path, "remove the file by hand", enrolled=True)
    revoked = keys_dir / REVOKED_DIR
    make_dir(revoked)
    stamp = int(time.time() * 1000)
    while os.path.lexists(dest := revoked / f"{worker_id}.{stamp}{PUBLIC_SUFFIX}"):
        stamp += 1
    try:
        os.replace(path, dest)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot move it to {revoked} ({exc.strerror})") from exc
    return entry


def list_enrolled(keys_dir: Path) -> list[EnrolledWorker]:
    """Every enrolled worker, sorted by id. Raises ``KeyFileError`` for a missing directory or a bad file."""
    keys_dir = Path(keys_dir)
    _require_keys_dir(keys_dir)
    return sorted(_read_enrolled(keys_dir, strict=True).values(), key=lambda e: e.worker_id)


_Snapshot = tuple[tuple[str, int, int, int, int], ...]
_Index = tuple[dict[str, EnrolledWorker], dict[bytes, EnrolledWorker]]


def _snapshot(keys_dir: Path) -> _Snapshot:
    """What the enrolment looks like on disk: each file's (name, inode, size, mtime_ns, ctime_ns).

    Comparing listings rather than the directory's mtime alone catches changes within one tick of a coarse
    filesystem clock; the inode catches an atomic replace by a file of the same size.
    """
    rows = []
    for path in _enrolled_files(keys_dir):
        try:
            st = path.stat()
        except FileNotFoundError:  # removed between the listing and the stat: it is gone
            continue
        rows.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(rows)


class Enrolment:
    """The enrolled workers as a running broker sees them, re-read when the files change.

    Safe to share with a ZAP thread: lookups read one immutable snapshot, reloads are serialised. The
    constructor is strict (a bad file raises ``KeyFileError``, so the operator sees it at start-up); a
    reload leaves bad files out with a warning, so a broken edit admits nobody and does not stop a run.
    An instance is also a pyzmq CURVE credentials provider (see ``callback``).
    """

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = Path(keys_dir)
        self._lock = threading.Lock()
        snapshot = _snapshot(self.keys_dir)  # taken first: a change while reading shows up next time
        self._state = self._index(_read_enrolled(self.keys_dir, strict=True))
        self._snapshot = snapshot

    @staticmethod
    def _index(by_id: dict[str, EnrolledWorker]) -> _Index:
        return by_id, {e.curve_public: e for e in by_id.values()}

    def reload_if_changed(self) -> bool:
        """Re-read the enrolment if any file was added, removed or changed; True if it re-read.

        Costs one directory listing and one stat per enrolled worker.
        """
        with self._lock:
            try:
                snapshot = _snapshot(self.keys_dir)
                if snapshot == self._snapshot:
                    return False
                state = self._index(_read_enrolled(self.keys_dir, strict=False))
            except OSError as exc:
                log.warning("cannot re-read the enrolment in %s, keeping the previous one: %s",
                            self.keys_dir, exc)
                return False
            self._state, self._snapshot = state, snapshot
            return True

    def by_curve_key(self, z85: bytes | str) -> EnrolledWorker | None:
        """The worker enrolled with this Z85 CURVE public key (bytes, or the ``str`` a frame's ``User-Id``
        property gives), or None."""
        key = z85.encode("ascii", "replace") if isinstance(z85, str) else bytes(z85)
        return self._state[1].get(key)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._state[0]

    def __len__(self) -> int:
        return len(self._state[0])

    def workers(self) -> list[EnrolledWorker]:
        """Every enrolled worker, sorted by id."""
        return sorted(self._state[0].values(), key=lambda e: e.worker_id)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's CURVE credentials-provider hook (``configure_curve_callback``): reload if the files
        changed, then admit ``key`` (Z85) only if it is enrolled. Runs on the authenticator's thread."""
        self.reload_if_changed()
        return self.by_curve_key(key) is not None

"""Key files: the broker's CURVE key pair, each worker's CURVE key pair and Ed25519 identity, and the
broker's record of which workers are enrolled.

Layout::

    <broker keys dir>/                      created 0700
        broker.key                          broker-public: the CURVE key every worker pins (copy it to them)
        broker.key_secret                   broker-secret, mode 0600: never leaves the broker host
        enrolled/<worker_id>.pub            worker-public + "enrolled_at", one per enrolled worker
        revoked/<worker_id>.<unix ms>.pub   revoked workers, moved here for the record; never read back

    <worker dir>/                           created 0700
        <worker_id>.pub                     worker-public: copy it to the broker host, then `fl keys enrol`
        <worker_id>.secret                  worker-secret, mode 0600: stays on the worker

Every file is one UTF-8 JSON object with ``"format": "federated-keys/1"`` and a ``"kind"``::

    broker-public   curve_public
    broker-secret   curve_public, curve_secret
    worker-public   worker_id, curve_public, identity_public          (+ enrolled_at in enrolled/)
    worker-secret   worker_id, curve_public, curve_secret, identity_public, identity_secret

CURVE keys are 40-character Z85 strings, exactly what zmq takes for ``CURVE_PUBLICKEY``/``CURVE_SECRETKEY``/
``CURVE_SERVERKEY`` and what the ZAP handler reports as a peer's key. Ed25519 keys are 64 hex characters
(the raw 32-byte public key, and the 32-byte private seed). Files also carry an informational ``created_at``.

Why JSON and not ZeroMQ's ZPL certificates (``zmq.auth.create_certificates``): a certificate holds only a
CURVE key pair and free-form metadata, its loader skips lines it does not understand, and
``create_certificates`` leaves the secret file world-readable. We need the worker id and the Ed25519
identity in the same file, four kinds that cannot be mistaken for each other (a secret file passed where a
public one belongs is refused, never copied), and a strict load whose errors name the file and the field.
JSON from the standard library does that and, unlike pickle, cannot run code.

Every load validates everything: kind, format, fields, Z85 and hex lengths, the worker id, and for secret
files that the stored public keys belong to the secret keys and that the file is not accessible to group
or others (``chmod 600``). Secret files are created 0600 from their first byte (``O_CREAT|O_EXCL`` on a
temporary file in the same directory, then a link or ``os.replace`` into place), and existing keys are
never overwritten without ``force``. Errors about a secret file (or any file with a secret field) never
quote what it holds, since a damaged secret key is still most of a secret key: they name the file, the
field and what is wrong with its shape.

CURVE key pairs are X25519 key pairs made by `cryptography` (CurveZMQ keys *are* X25519 keys; libzmq and
`cryptography` both clamp the scalar), so all the key generation in this package goes through one library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from zmq.utils.z85 import decode as z85_decode
from zmq.utils.z85 import encode as z85_encode

from federated.crypto.errors import CryptoError
from federated.crypto.primitives import KEY_BYTES, public_bytes
from federated.protocol.errors import MalformedMessage
from federated.protocol.fields import validate_worker_id

__all__ = [
    "BROKER_PUBLIC",
    "BROKER_SECRET",
    "ENROLLED_DIR",
    "FORMAT",
    "REVOKED_DIR",
    "BrokerKeys",
    "EnrolledWorker",
    "Enrolment",
    "KeyFileError",
    "WorkerKeys",
    "check_secret_mode",
    "create_broker_keys",
    "create_worker_keys",
    "enrol_worker",
    "fingerprint",
    "list_enrolled",
    "load_broker_keys",
    "load_broker_public",
    "load_worker_keys",
    "revoke_worker",
]

log = logging.getLogger(__name__)

FORMAT = "federated-keys/1"
BROKER_PUBLIC = "broker.key"
BROKER_SECRET = "broker.key_secret"
ENROLLED_DIR = "enrolled"
REVOKED_DIR = "revoked"
_PUBLIC_SUFFIX = ".pub"
_SECRET_SUFFIX = ".secret"
_Z85_KEY_CHARS = 40
_MAX_FILE_BYTES = 64 * 1024  # real key files are a few hundred bytes
_HEX_KEY = re.compile(rf"[0-9a-fA-F]{{{2 * KEY_BYTES}}}")

_FIX_BROKER = "create the broker keys with `fl keys broker --keys-dir DIR` (add --force to replace them)"
_FIX_WORKER = "create the worker's keys with `fl keys worker --client-id ID --out DIR`"
_FIX_BROKER_PUBLIC = "copy broker.key from the broker's keys directory again"
_FIX_ENROLLED = "move the file out of enrolled/ and enrol the worker again with `fl keys enrol`"


class KeyFileError(CryptoError):
    """A key file is missing, malformed, inconsistent, unsafe (mode) or would be overwritten.

    The message names the file and says how to fix it.
    """

    code = "key_file"


@dataclass(frozen=True)
class BrokerKeys:
    """The broker's CURVE key pair, both as 40-byte Z85."""

    public: bytes
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class WorkerKeys:
    """Everything a worker holds: its CURVE key pair (Z85) and its Ed25519 identity, which signs its
    secure-aggregation key advertisements."""

    worker_id: str
    curve_public: bytes
    curve_secret: bytes = field(repr=False)
    identity: Ed25519PrivateKey = field(repr=False, compare=False)

    @property
    def identity_public(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return public_bytes(self.identity)

    @property
    def fingerprint(self) -> str:
        """Short digest of both public keys, to compare by eye with what ``fl keys enrol`` prints."""
        return fingerprint(self.curve_public, self.identity_public)


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


def fingerprint(curve_public: bytes, identity_public: bytes) -> str:
    """128 bits of SHA-256 over a worker's CURVE (Z85) and Ed25519 (raw) public keys, as 8 groups of 4 hex."""
    digest = hashlib.sha256(b"federated-keys/1 fingerprint\0" + curve_public + identity_public).hexdigest()
    return "-".join(digest[i:i + 4] for i in range(0, 32, 4))


# --- reading and validating ---------------------------------------------------------------------------

def check_secret_mode(path: Path) -> None:
    """Raise ``KeyFileError`` if group or others have any access to ``path`` (``mode & 0o077``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot stat it ({exc.strerror})") from exc
    _check_mode(Path(path), mode)


def _check_mode(path: Path, mode: int) -> None:
    if mode & 0o077:
        raise KeyFileError(
            f"{path} is readable or writable by group or others (mode {mode & 0o777:04o}); a secret key "
            f"file must be private to its owner; run: chmod 600 {shlex.quote(str(path))}")


def _read(path: Path, *, secret: bool, fix: str) -> bytes:
    """The bytes of a key file (at most 64 KiB); for a secret file, the mode is checked on the open file."""
    try:
        with open(path, "rb") as f:
            if secret:
                _check_mode(path, os.fstat(f.fileno()).st_mode)
            raw = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file; {fix}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path} is a directory, not a key file; {fix}") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read it ({exc.strerror}); check its owner and permissions"
                           ) from exc
    if len(raw) > _MAX_FILE_BYTES:
        raise KeyFileError(f"{path} is larger than {_MAX_FILE_BYTES // 1024} KiB, so not a key file; {fix}")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_SECRET_KINDS = {
    "worker-secret": "it is a worker's secret key file, which must stay on the worker",
    "broker-secret": "it is the broker's secret key file, which must stay on the broker",
}
_KINDS = frozenset({"broker-public", "worker-public", *_SECRET_KINDS})


def _load(path: Path, kind: str, *, fix: str) -> dict[str, Any]:
    """Read and parse one key file of ``kind``; every failure names the file. For a secret kind no failure
    quotes the file's content (see :func:`_show`)."""
    path = Path(path)
    secret = kind.endswith("-secret")
    raw = _read(path, secret=secret, fix=fix)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # its message quotes the offending byte: give the position only
        raise KeyFileError(f"{path} is not a federated key file (not UTF-8: byte {exc.start} is not valid "
                           f"UTF-8); {fix}") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError: its message gives line and column, never content
        raise KeyFileError(f"{path} is not a federated key file (not JSON: {exc}); {fix}") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"{path} is not a federated key file (not a JSON object); {fix}")
    # A secret file handed over where a public one belongs (its kind damaged, say) is quoted no more than
    # one loaded as a secret file.
    secret = secret or _holds_secret(doc)
    if doc.get("format") != FORMAT:
        raise KeyFileError(f"{path}: unsupported key file format {_show(doc.get('format'), secret=secret)} "
                           f"(expected {FORMAT!r}); {fix}")
    got = doc.get("kind")
    if got != kind:
        known = isinstance(got, str) and got in _KINDS
        hint = f"{_SECRET_KINDS[got]}; " if isinstance(got, str) and got in _SECRET_KINDS else ""
        holds = f"holds a {got!r} key" if known else f"has kind {_show(got, secret=secret)}"
        raise KeyFileError(f"{path} {holds}, expected a {kind!r} key; {hint}{fix}")
    return doc


def _holds_secret(doc: dict[str, Any]) -> bool:
    """Whether a parsed key file has a secret field (by name), whatever its kind says."""
    return any("secret" in str(name) for name in doc)


def _show(value: object, *, secret: bool = False) -> str:
    """A field's value for an error message. From a secret file, only its shape (type and length): a
    damaged or misplaced secret key must not reach a terminal, a log or a bug report."""
    if secret:
        if value is None:
            return "nothing (the field is missing)"
        if isinstance(value, str):
            return f"a string of {len(value)} characters (not shown: this is a secret key file)"
        return f"a JSON {type(value).__name__} (not shown: this is a secret key file)"
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + "..."


def _z85_field(path: Path, doc: dict[str, Any], name: str, fix: str, *, secret: bool = False) -> bytes:
    value = doc.get(name)
    if isinstance(value, str) and len(value) == _Z85_KEY_CHARS:
        try:
            if z85_encode(z85_decode(value)).decode("ascii") == value:  # refuses digit groups >= 2^32
                return value.encode("ascii")
        except (KeyError, ValueError, struct.error):  # KeyError: a character outside the Z85 alphabet
            pass
    raise KeyFileError(f"{path}: field {name!r} must be a CURVE key of {_Z85_KEY_CHARS} Z85 characters, "
                       f"got {_show(value, secret=secret)}; {fix}")


def _hex_field(path: Path, doc: dict[str, Any], name: str, fix: str, *, secret: bool = False) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str) or not _HEX_KEY.fullmatch(value):
        raise KeyFileError(f"{path}: field {name!r} must be a key of {2 * KEY_BYTES} hex characters, "
                           f"got {_show(value, secret=secret)}; {fix}")
    return bytes.fromhex(value)


def _worker_id_field(path: Path, doc: dict[str, Any], fix: str, *, secret: bool = False) -> str:
    value = doc.get("worker_id")
    try:
        return validate_worker_id(value)
    except MalformedMessage as exc:
        if secret:  # validate_worker_id's message quotes the value
            raise KeyFileError(f"{path}: field 'worker_id' must be 1-128 characters of letters, digits and "
                               f"_.:@-, got {_show(value, secret=True)}; {fix}") from None
        raise KeyFileError(f"{path}: field 'worker_id': {exc}; {fix}") from None


def _time_field(path: Path, doc: dict[str, Any], name: str, fix: str) -> float:
    value = doc.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11:
        return float(value)
    raise KeyFileError(f"{path}: field {name!r} must be unix seconds, got {_show(value)}; {fix}")


def _check_curve_pair(path: Path, public: bytes, secret: bytes, fix: str) -> None:
    derived = public_bytes(X25519PrivateKey.from_private_bytes(z85_decode(secret)))
    if z85_encode(derived) != public:
        raise KeyFileError(f"{path}: 'curve_public' is not the public key of 'curve_secret' (the file was "
                           f"edited or damaged); {fix}")


def _identity_public(path: Path, doc: dict[str, Any], fix: str, *, secret: bool = False) -> bytes:
    raw = _hex_field(path, doc, "identity_public", fix, secret=secret)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError(f"{path}: field 'identity_public' is not an Ed25519 public key; {fix}") from None
    return raw


# --- writing ------------------------------------------------------------------------------------------

def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps({"format": FORMAT, **doc}, indent=2) + "\n").encode("utf-8")


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise KeyFileError(f"{directory} exists and is not a directory; choose another directory") from None
    except OSError as exc:
        raise KeyFileError(f"{directory}: cannot create the directory ({exc.strerror})") from exc


def _exists_error(path: Path) -> KeyFileError:
    return KeyFileError(f"{path} already exists; refusing to overwrite key material (pass --force, or "
                        f"force=True, to replace it; every peer that knows the old key then needs the new "
                        f"one)")


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    if not force:
        for path in paths:
            if os.path.lexists(path):
                raise _exists_error(path)


def _write_file(path: Path, data: bytes, *, secret: bool, force: bool) -> None:
    """Write ``data`` to ``path`` atomically; a secret file is 0600 from its creation, whatever the umask.

    Without ``force`` an existing ``path`` is never replaced (a hard link refuses to clobber, unlike a
    rename), so two concurrent runs cannot silently swap keys under each other.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    except OSError as exc:
        raise KeyFileError(f"{path.parent}: cannot write key files there ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if secret:
                os.fchmod(f.fileno(), 0o600)  # exactly 0600 even under a strict umask such as 0o277
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise _exists_error(path) from None
            except OSError:  # a filesystem without hard links: check, then rename
                if os.path.lexists(path):
                    raise _exists_error(path) from None
                os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write it ({exc.strerror})") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem can sync a directory; the files themselves are synced
    finally:
        os.close(fd)


def _curve_keypair() -> tuple[bytes, bytes]:
    private = X25519PrivateKey.generate()
    return z85_encode(public_bytes(private)), z85_encode(private.private_bytes_raw())


def _worker_id_arg(worker_id: str) -> str:
    try:
        return validate_worker_id(worker_id)
    except MalformedMessage as exc:
        raise ValueError(str(exc)) from None


# --- the broker's keys --------------------------------------------------------------------------------

def create_broker_keys(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Create the broker's CURVE key pair in ``directory``: (public file, secret file).

    Raises ``KeyFileError`` if either file exists (unless ``force``) or cannot be written.
    """
    directory = Path(directory)
    public_path, secret_path = directory / BROKER_PUBLIC, directory / BROKER_SECRET
    _make_dir(directory)
    _refuse_existing((public_path, secret_path), force)
    public, secret = _curve_keypair()
    now = time.time()
    _write_file(secret_path, _dump({"kind": "broker-secret", "curve_public": public.decode(),
                                    "curve_secret": secret.decode(), "created_at": now}),
                secret=True, force=force)
    _write_file(public_path, _dump({"kind": "broker-public", "curve_public": public.decode(),
                                    "created_at": now}), secret=False, force=force)
    return public_path, secret_path


def load_broker_keys(directory: Path) -> BrokerKeys:
    """The broker's key pair from its keys directory (or from the ``broker.key_secret`` file itself).

    Raises ``KeyFileError`` if the secret file is missing, malformed, inconsistent, accessible to group or
    others, or if ``broker.key`` beside it holds a different public key.
    """
    directory = Path(directory)
    secret_path = directory / BROKER_SECRET if directory.is_dir() else directory
    doc = _load(secret_path, "broker-secret", fix=_FIX_BROKER)
    public = _z85_field(secret_path, doc, "curve_public", _FIX_BROKER, secret=True)
    secret = _z85_field(secret_path, doc, "curve_secret", _FIX_BROKER, secret=True)
    _check_curve_pair(secret_path, public, secret, _FIX_BROKER)
    public_path = secret_path.with_name(BROKER_PUBLIC)
    if public_path.exists() and load_broker_public(public_path) != public:
        raise KeyFileError(f"{public_path} does not match {secret_path} (one of them was replaced); "
                           f"{_FIX_BROKER}, then give every worker the new broker.key")
    return BrokerKeys(public=public, secret=secret)


def load_broker_public(path: Path) -> bytes:
    """The broker's CURVE public key (Z85) from ``broker.key`` or the directory holding it: what a worker
    pins as ``CURVE_SERVERKEY``. Raises ``KeyFileError`` for a missing or malformed file."""
    path = Path(path)
    if path.is_dir():
        path = path / BROKER_PUBLIC
    doc = _load(path, "broker-public", fix=_FIX_BROKER_PUBLIC)
    return _z85_field(path, doc, "curve_public", _FIX_BROKER_PUBLIC)


# --- a worker's keys ----------------------------------------------------------------------------------

def create_worker_keys(directory: Path, worker_id: str, *, force: bool = False) -> tuple[Path, Path]:
    """Create a worker's CURVE key pair and Ed25519 identity in ``directory``: (``<worker_id>.pub`` to copy
    to the broker host, ``<worker_id>.secret`` that stays on the worker).

    Raises ``ValueError`` for an invalid worker id and ``KeyFileError`` if either file exists (unless
    ``force``) or cannot be written.
    """
    worker_id = _worker_id_arg(worker_id)
    directory = Path(directory)
    public_path = directory / f"{worker_id}{_PUBLIC_SUFFIX}"
    secret_path = directory / f"{worker_id}{_SECRET_SUFFIX}"
    _make_dir(directory)
    _refuse_existing((public_path, secret_path), force)
    curve_public, curve_secret = _curve_keypair()
    identity = Ed25519PrivateKey.generate()
    public = {"worker_id": worker_id, "curve_public": curve_public.decode(),
              "identity_public": public_bytes(identity).hex(), "created_at": time.time()}
    _write_file(secret_path, _dump({"kind": "worker-secret", **public, "curve_secret": curve_secret.decode(),
                                    "identity_secret": identity.private_bytes_raw().hex()}),
                secret=True, force=force)
    _write_file(public_path, _dump({"kind": "worker-public", **public}), secret=False, force=force)
    return public_path, secret_path


def load_worker_keys(path: Path) -> WorkerKeys:
    """A worker's keys from its ``<worker_id>.secret`` file, or from the directory holding exactly one.

    Raises ``KeyFileError`` if the file is missing, malformed, inconsistent or accessible to group or others.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(f"*{_SECRET_SUFFIX}"))
        if not found:
            raise KeyFileError(f"{path} holds no worker secret key file (*{_SECRET_SUFFIX}); {_FIX_WORKER}")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise KeyFileError(f"{path} holds several worker secret key files ({names}); "
                               f"pass the file to use")
        path = found[0]
    doc = _load(path, "worker-secret", fix=_FIX_WORKER)
    worker_id = _worker_id_field(path, doc, _FIX_WORKER, secret=True)
    curve_public = _z85_field(path, doc, "curve_public", _FIX_WORKER, secret=True)
    curve_secret = _z85_field(path, doc, "curve_secret", _FIX_WORKER, secret=True)
    _check_curve_pair(path, curve_public, curve_secret, _FIX_WORKER)
    identity_public = _identity_public(path, doc, _FIX_WORKER, secret=True)
    identity = Ed25519PrivateKey.from_private_bytes(
        _hex_field(path, doc, "identity_secret", _FIX_WORKER, secret=True))
    if public_bytes(identity) != identity_public:
        raise KeyFileError(f"{path}: 'identity_public' is not the public key of 'identity_secret' (the file "
                           f"was edited or damaged); {_FIX_WORKER}")
    return WorkerKeys(worker_id=worker_id, curve_public=curve_public, curve_secret=curve_secret,
                      identity=identity)


# --- enrolment ----------------------------------------------------------------------------------------

def _load_worker_public(path: Path, fix: str, *, enrolled: bool) -> EnrolledWorker:
    doc = _load(path, "worker-public", fix=fix)
    secret = _holds_secret(doc)
    worker_id = _worker_id_field(path, doc, fix, secret=secret)
    curve_public = _z85_field(path, doc, "curve_public", fix, secret=secret)
    identity_public = _identity_public(path, doc, fix, secret=secret)
    enrolled_at = _time_field(path, doc, "enrolled_at", fix) if enrolled else 0.0
    if enrolled and path.name != f"{worker_id}{_PUBLIC_SUFFIX}":
        raise KeyFileError(f"{path} holds the key of worker {worker_id!r}, so it must be named "
                           f"{worker_id}{_PUBLIC_SUFFIX}; {fix}")
    return EnrolledWorker(worker_id, curve_public, identity_public, enrolled_at)


def _enrolled_files(keys_dir: Path) -> list[Path]:
    directory = keys_dir / ENROLLED_DIR
    if not directory.is_dir():
        return []
    # Our temporary files are ".<name>.<random>.tmp": never read half-written ones.
    return sorted(p for p in directory.iterdir()
                  if p.name.endswith(_PUBLIC_SUFFIX) and not p.name.startswith("."))


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
    _make_dir(keys_dir / ENROLLED_DIR)
    _write_file(keys_dir / ENROLLED_DIR / f"{entry.worker_id}{_PUBLIC_SUFFIX}",
                _dump({"kind": "worker-public", "worker_id": entry.worker_id,
                       "curve_public": entry.curve_public.decode(),
                       "identity_public": entry.identity_public.hex(),
                       "enrolled_at": entry.enrolled_at}),
                secret=False, force=False)
    return entry


def revoke_worker(keys_dir: Path, worker_id: str) -> EnrolledWorker:
    """Withdraw a worker's enrolment: its file moves to ``keys_dir/revoked/``. Returns what was enrolled.

    Raises ``ValueError`` for an invalid id and ``KeyFileError`` if the worker is not enrolled.
    """
    keys_dir, worker_id = Path(keys_dir), _worker_id_arg(worker_id)
    _require_keys_dir(keys_dir)
    path = keys_dir / ENROLLED_DIR / f"{worker_id}{_PUBLIC_SUFFIX}"
    if not path.is_file():
        raise KeyFileError(f"worker {worker_id!r} is not enrolled in {keys_dir} (no {path}); "
                           f"`fl keys list --keys-dir {shlex.quote(str(keys_dir))}` shows who is")
    entry = _load_worker_public(path, "remove the file by hand", enrolled=True)
    revoked = keys_dir / REVOKED_DIR
    _make_dir(revoked)
    stamp = int(time.time() * 1000)
    while os.path.lexists(dest := revoked / f"{worker_id}.{stamp}{_PUBLIC_SUFFIX}"):
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

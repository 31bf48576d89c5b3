"""The key-file format: one strict JSON object per file, its parsing and checks, its writing, and
:class:`KeyFileError`.

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
or others (``chmod 600``). Secret files are created 0600 from their first byte and existing keys are never
overwritten without ``force`` (:func:`federated.durable.write_atomic`). Errors about a secret file (or any
file with a secret field) never quote what it holds, since a damaged secret key is still most of a secret
key: they name the file, the field and what is wrong with its shape.

CURVE key pairs are X25519 key pairs made by `cryptography` (CurveZMQ keys *are* X25519 keys; libzmq and
`cryptography` both clamp the scalar), so all the key generation in this package goes through one library.

The error tree: ``CryptoError`` (:mod:`federated.crypto.errors`) └── ``KeyFileError``, the only error of
this package. The helpers below :class:`KeyFileError` serve the package's other modules (``broker``,
``worker``, ``enrolment``); :mod:`federated.keys` re-exports ``FORMAT``, ``KeyFileError`` and
``check_secret_mode`` only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from zmq.utils.z85 import decode as z85_decode
from zmq.utils.z85 import encode as z85_encode

from federated.crypto.errors import CryptoError
from federated.crypto.primitives import KEY_BYTES, public_bytes
from federated.durable import UnwritableDirectory, write_atomic
from federated.protocol.errors import MalformedMessage
from federated.protocol.fields import validate_worker_id

__all__ = [
    "FORMAT",
    "PUBLIC_SUFFIX",
    "SECRET_SUFFIX",
    "KeyFileError",
    "check_curve_pair",
    "check_secret_mode",
    "checked_worker_id",
    "curve_keypair",
    "dump",
    "hex_field",
    "holds_secret",
    "identity_public_field",
    "load_document",
    "make_dir",
    "refuse_existing",
    "time_field",
    "worker_id_field",
    "write_key_file",
    "z85_field",
]

FORMAT = "federated-keys/1"
PUBLIC_SUFFIX = ".pub"
SECRET_SUFFIX = ".secret"
_Z85_KEY_CHARS = 40
_MAX_FILE_BYTES = 64 * 1024  # real key files are a few hundred bytes
_HEX_KEY = re.compile(rf"[0-9a-fA-F]{{{2 * KEY_BYTES}}}")


class KeyFileError(CryptoError):
    """A key file is missing, malformed, inconsistent, unsafe (mode) or would be overwritten.

    The message names the file and says how to fix it.
    """

    code = "key_file"


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


def load_document(path: Path, kind: str, *, fix: str) -> dict[str, Any]:
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
    secret = secret or holds_secret(doc)
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


def holds_secret(doc: dict[str, Any]) -> bool:
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


def z85_field(path: Path, doc: dict[str, Any], name: str, fix: str, *, secret: bool = False) -> bytes:
    """Field ``name`` as a 40-byte Z85 CURVE key; ``secret``: the file holds a secret (quote nothing)."""
    value = doc.get(name)
    if isinstance(value, str) and len(value) == _Z85_KEY_CHARS:
        try:
            if z85_encode(z85_decode(value)).decode("ascii") == value:  # refuses digit groups >= 2^32
                return value.encode("ascii")
        except (KeyError, ValueError, struct.error):  # KeyError: a character outside the Z85 alphabet
            pass
    raise KeyFileError(f"{path}: field {name!r} must be a CURVE key of {_Z85_KEY_CHARS} Z85 characters, "
                       f"got {_show(value, secret=secret)}; {fix}")


def hex_field(path: Path, doc: dict[str, Any], name: str, fix: str, *, secret: bool = False) -> bytes:
    """Field ``name`` as a 32-byte key written in hex."""
    value = doc.get(name)
    if not isinstance(value, str) or not _HEX_KEY.fullmatch(value):
        raise KeyFileError(f"{path}: field {name!r} must be a key of {2 * KEY_BYTES} hex characters, "
                           f"got {_show(value, secret=secret)}; {fix}")
    return bytes.fromhex(value)


def worker_id_field(path: Path, doc: dict[str, Any], fix: str, *, secret: bool = False) -> str:
    """Field ``worker_id``, checked as the wire checks a worker id."""
    value = doc.get("worker_id")
    try:
        return validate_worker_id(value)
    except MalformedMessage as exc:
        if secret:  # validate_worker_id's message quotes the value
            raise KeyFileError(f"{path}: field 'worker_id' must be 1-128 characters of letters, digits and "
                               f"_.:@-, got {_show(value, secret=True)}; {fix}") from None
        raise KeyFileError(f"{path}: field 'worker_id': {exc}; {fix}") from None


def time_field(path: Path, doc: dict[str, Any], name: str, fix: str) -> float:
    """Field ``name`` as unix seconds."""
    value = doc.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11:
        return float(value)
    raise KeyFileError(f"{path}: field {name!r} must be unix seconds, got {_show(value)}; {fix}")


def check_curve_pair(path: Path, public: bytes, secret: bytes, fix: str) -> None:
    """Raise ``KeyFileError`` unless ``public`` (Z85) is the CURVE public key of ``secret`` (Z85)."""
    derived = public_bytes(X25519PrivateKey.from_private_bytes(z85_decode(secret)))
    if z85_encode(derived) != public:
        raise KeyFileError(f"{path}: 'curve_public' is not the public key of 'curve_secret' (the file was "
                           f"edited or damaged); {fix}")


def identity_public_field(path: Path, doc: dict[str, Any], fix: str, *, secret: bool = False) -> bytes:
    """Field ``identity_public`` as a raw 32-byte Ed25519 public key that `cryptography` accepts."""
    raw = hex_field(path, doc, "identity_public", fix, secret=secret)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError(f"{path}: field 'identity_public' is not an Ed25519 public key; {fix}") from None
    return raw


# --- writing ------------------------------------------------------------------------------------------

def dump(doc: dict[str, Any]) -> bytes:
    """``doc`` as the bytes of a key file (the format tag first)."""
    return (json.dumps({"format": FORMAT, **doc}, indent=2) + "\n").encode("utf-8")


def make_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) 0700 if missing. Raises ``KeyFileError`` if it cannot."""
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


def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """Raise ``KeyFileError`` if any of ``paths`` exists, unless ``force``."""
    if not force:
        for path in paths:
            if os.path.lexists(path):
                raise _exists_error(path)


def write_key_file(path: Path, data: bytes, *, secret: bool, force: bool) -> None:
    """Write ``data`` to ``path`` atomically; a secret file is 0600 from its creation, whatever the umask,
    a public one 0644.

    Without ``force`` an existing ``path`` is never replaced (a hard link refuses to clobber, unlike a
    rename), so two concurrent runs cannot silently swap keys under each other. Raises ``KeyFileError``.
    """
    try:
        write_atomic(path, data, mode=0o600 if secret else 0o644, overwrite=force)
    except UnwritableDirectory as exc:
        raise KeyFileError(f"{path.parent}: cannot write key files there ({exc.strerror})") from exc
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write it ({exc.strerror})") from exc


def curve_keypair() -> tuple[bytes, bytes]:
    """A new CURVE key pair, (public, secret), both 40-byte Z85."""
    private = X25519PrivateKey.generate()
    return z85_encode(public_bytes(private)), z85_encode(private.private_bytes_raw())


def checked_worker_id(worker_id: str) -> str:
    """``worker_id`` if the wire would accept it; ``ValueError`` (with the wire's reason) if not."""
    try:
        return validate_worker_id(worker_id)
    except MalformedMessage as exc:
        raise ValueError(str(exc)) from None

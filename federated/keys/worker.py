"""A worker's keys: its CURVE key pair and its Ed25519 identity, which signs its secure-aggregation key
advertisements.

In the worker's directory (created 0700)::

    <worker_id>.pub       worker-public: copy it to the broker host, then `fl keys enrol`
    <worker_id>.secret    worker-secret, mode 0600: stays on the worker

The file format and its checks are :mod:`federated.keys.format`'s.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federated.crypto.primitives import public_bytes
from federated.keys.format import (
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    KeyFileError,
    check_curve_pair,
    checked_worker_id,
    curve_keypair,
    dump,
    hex_field,
    identity_public_field,
    load_document,
    make_dir,
    refuse_existing,
    worker_id_field,
    write_key_file,
    z85_field,
)

__all__ = ["WorkerKeys", "create_worker_keys", "fingerprint", "load_worker_keys"]

_FIX_WORKER = "create the worker's keys with `fl keys worker --client-id ID --out DIR`"


def fingerprint(curve_public: bytes, identity_public: bytes) -> str:
    """128 bits of SHA-256 over a worker's CURVE (Z85) and Ed25519 (raw) public keys, as 8 groups of 4 hex."""
    digest = hashlib.sha256(b"federated-keys/1 fingerprint\0" + curve_public + identity_public).hexdigest()
    return "-".join(digest[i:i + 4] for i in range(0, 32, 4))


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


def create_worker_keys(directory: Path, worker_id: str, *, force: bool = False) -> tuple[Path, Path]:
    """Create a worker's CURVE key pair and Ed25519 identity in ``directory``: (``<worker_id>.pub`` to copy
    to the broker host, ``<worker_id>.secret`` that stays on the worker).

    Raises ``ValueError`` for an invalid worker id and ``KeyFileError`` if either file exists (unless
    ``force``) or cannot be written.
    """
    worker_id = checked_worker_id(worker_id)
    directory = Path(directory)
    public_path = directory / f"{worker_id}{PUBLIC_SUFFIX}"
    secret_path = directory / f"{worker_id}{SECRET_SUFFIX}"
    make_dir(directory)
    refuse_existing((public_path, secret_path), force)
    curve_public, curve_secret = curve_keypair()
    identity = Ed25519PrivateKey.generate()
    public = {"worker_id": worker_id, "curve_public": curve_public.decode(),
              "identity_public": public_bytes(identity).hex(), "created_at": time.time()}
    write_key_file(secret_path, dump({"kind": "worker-secret", **public, "curve_secret": curve_secret.decode(),
                                      "identity_secret": identity.private_bytes_raw().hex()}),
                   secret=True, force=force)
    write_key_file(public_path, dump({"kind": "worker-public", **public}), secret=False, force=force)
    return public_path, secret_path


def load_worker_keys(path: Path) -> WorkerKeys:
    """A worker's keys from its ``<worker_id>.secret`` file, or from the directory holding exactly one.

    Raises ``KeyFileError`` if the file is missing, malformed, inconsistent or accessible to group or others.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(f"*{SECRET_SUFFIX}"))
        if not found:
            raise KeyFileError(f"{path} holds no worker secret key file (*{SECRET_SUFFIX}); {_FIX_WORKER}")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise KeyFileError(f"{path} holds several worker secret key files ({names}); "
                               f"pass the file to use")
        path = found[0]
    doc = load_document(path, "worker-secret", fix=_FIX_WORKER)
    worker_id = worker_id_field(path, doc, _FIX_WORKER, secret=True)
    curve_public = z85_field(path, doc, "curve_public", _FIX_WORKER, secret=True)
    curve_secret = z85_field(path, doc, "curve_secret", _FIX_WORKER, secret=True)
    check_curve_pair(path, curve_public, curve_secret, _FIX_WORKER)
    identity_public = identity_public_field(path, doc, _FIX_WORKER, secret=True)
    identity = Ed25519PrivateKey.from_private_bytes(
        hex_field(path, doc, "identity_secret", _FIX_WORKER, secret=True))
    if public_bytes(identity) != identity_public:
        raise KeyFileError(f"{path}: 'identity_public' is not the public key of 'identity_secret' (the file "
                           f"was edited or damaged); {_FIX_WORKER}")
    return WorkerKeys(worker_id=worker_id, curve_public=curve_public, curve_secret=curve_secret,
                      identity=identity)

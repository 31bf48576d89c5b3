"""The broker's keys: its CURVE key pair, which every worker pins.

In the broker's keys directory (created 0700)::

    broker.key            broker-public: the CURVE key every worker pins (copy it to them)
    broker.key_secret     broker-secret, mode 0600: never leaves the broker host

The file format and its checks are :mod:`federated.keys.format`'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from federated.keys.format import (
    KeyFileError,
    check_curve_pair,
    curve_keypair,
    dump,
    load_document,
    make_dir,
    refuse_existing,
    write_key_file,
    z85_field,
)

__all__ = [
    "BROKER_PUBLIC",
    "BROKER_SECRET",
    "BrokerKeys",
    "create_broker_keys",
    "load_broker_keys",
    "load_broker_public",
]

BROKER_PUBLIC = "broker.key"
BROKER_SECRET = "broker.key_secret"

_FIX_BROKER = "create the broker keys with `fl keys broker --keys-dir DIR` (add --force to replace them)"
_FIX_BROKER_PUBLIC = "copy broker.key from the broker's keys directory again"


@dataclass(frozen=True)
class BrokerKeys:
    """The broker's CURVE key pair, both as 40-byte Z85."""

    public: bytes
    secret: bytes = field(repr=False)


def create_broker_keys(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Create the broker's CURVE key pair in ``directory``: (public file, secret file).

    Raises ``KeyFileError`` if either file exists (unless ``force``) or cannot be written.
    """
    directory = Path(directory)
    public_path, secret_path = directory / BROKER_PUBLIC, directory / BROKER_SECRET
    make_dir(directory)
    refuse_existing((public_path, secret_path), force)
    public, secret = curve_keypair()
    now = time.time()
    write_key_file(secret_path, dump({"kind": "broker-secret", "curve_public": public.decode(),
                                      "curve_secret": secret.decode(), "created_at": now}),
                   secret=True, force=force)
    write_key_file(public_path, dump({"kind": "broker-public", "curve_public": public.decode(),
                                      "created_at": now}), secret=False, force=force)
    return public_path, secret_path


def load_broker_keys(directory: Path) -> BrokerKeys:
    """The broker's key pair from its keys directory (or from the ``broker.key_secret`` file itself).

    Raises ``KeyFileError`` if the secret file is missing, malformed, inconsistent, accessible to group or
    others, or if ``broker.key`` beside it holds a different public key.
    """
    directory = Path(directory)
    secret_path = directory / BROKER_SECRET if directory.is_dir() else directory
    doc = load_document(secret_path, "broker-secret", fix=_FIX_BROKER)
    public = z85_field(secret_path, doc, "curve_public", _FIX_BROKER, secret=True)
    secret = z85_field(secret_path, doc, "curve_secret", _FIX_BROKER, secret=True)
    check_curve_pair(secret_path, public, secret, _FIX_BROKER)
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
    doc = load_document(path, "broker-public", fix=_FIX_BROKER_PUBLIC)
    return z85_field(path, doc, "curve_public", _FIX_BROKER_PUBLIC)

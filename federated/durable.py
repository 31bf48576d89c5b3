"""Durable file writes: a reader sees the old file or the whole new one, never part of one, even after a
crash or a power cut.

One recipe, used by the key files (:mod:`federated.keys`) and the broker's round store
(:mod:`federated.broker.store`): write a temporary file in the target's directory, created 0600 with
``O_CREAT|O_EXCL`` so no one else can open it while it is being written, fsync it, give it its final mode,
move it into place (``os.replace``, or a hard link that refuses to clobber an existing file), then fsync
the directory so the rename itself survives a power cut.

Why a top-level module: DESIGN §2's layers are protocol < crypto < keys, aggregation, ... < broker, worker
< cli, and both ``keys`` and ``broker`` need this. It belongs to neither, and it is not wire format
(``protocol``) or cryptography (``crypto``); a module of its own that imports only the standard library
sits below every layer, so any layer may use it without an upward import.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

__all__ = ["UnwritableDirectory", "fsync_directory", "write_atomic"]

#: ``fsync`` of a directory fails with these on file systems that cannot sync one; the file itself was.
_CANNOT_SYNC_DIRECTORY = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


class UnwritableDirectory(OSError):
    """The temporary file could not be created in the target's directory (missing, not a directory, no
    permission, full): nothing was written. ``errno``/``strerror`` are the underlying error's, ``filename``
    is the directory."""


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` durably and atomically; the file ends up with exactly ``mode``.

    The temporary file (``.<name>.<random>.tmp`` beside ``path``, so a directory listing that skips
    dot-files never sees it) is 0600 from its creation, whatever the umask, and only gets ``mode`` once
    all of ``data`` is in it. With ``overwrite=False`` an existing ``path`` is never replaced: the file is
    hard-linked into place, which refuses to clobber (unlike a rename), so two concurrent writers cannot
    silently swap contents under each other; on a file system without hard links the fallback checks,
    then renames.

    Raises :class:`UnwritableDirectory` if the temporary file cannot be created, ``FileExistsError`` if
    ``overwrite`` is False and ``path`` exists, and ``OSError`` for any other failure. On every failure
    the temporary file is removed; ``path`` is left as it was unless only the final directory fsync
    failed (then the new file is in place but its name may not survive a power cut).
    """
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600, O_EXCL
    except OSError as exc:
        raise UnwritableDirectory(exc.errno, exc.strerror, str(path.parent)) from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # exact, even under a strict umask such as 0o277
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: check, then rename
                if os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
                os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # after a link the name is a second one for the file; after a rename, gone


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename into it, a new file) durable.

    A file system that cannot sync a directory (``EINVAL``, ``ENOTSUP``) is let be: the files themselves
    were synced. Any other failure raises ``OSError``.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC_DIRECTORY:
            raise
    finally:
        os.close(fd)

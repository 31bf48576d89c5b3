"""federated.durable: atomic, fsynced writes that are 0600 from the first byte."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from federated import durable
from federated.durable import UnwritableDirectory, write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_has_exactly_the_mode_asked_for_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)  # would make a plain 0600 create 0400
    try:
        write_atomic(tmp_path / "secret", b"s")
        write_atomic(tmp_path / "public", b"p", mode=0o644)
    finally:
        os.umask(old)
    assert (mode(tmp_path / "secret"), mode(tmp_path / "public")) == (0o600, 0o644)
    assert (tmp_path / "secret").read_bytes() == b"s"


def test_the_file_is_0600_while_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:  # the first fsync is the temporary file's, before it gets its final mode
        if not seen:
            tmp = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            assert len(tmp) == 1 and tmp[0].name.startswith(".target.")
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fchmod", lambda fd, m: None)  # so the creation mode is what fsync sees
    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(tmp_path / "target", b"data", mode=0o644)
    assert seen == [0o600]


def test_replace_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    inode = target.stat().st_ino
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_no_overwrite_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_atomic(target, b"new", overwrite=False)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
    write_atomic(tmp_path / "g", b"new", overwrite=False)
    assert (tmp_path / "g").read_bytes() == b"new" and mode(tmp_path / "g") == 0o600


def test_no_overwrite_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    write_atomic(tmp_path / "f", b"one", overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "f", b"two", overwrite=False)
    assert (tmp_path / "f").read_bytes() == b"one"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "g", b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_an_unwritable_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(UnwritableDirectory) as info:
        write_atomic(missing / "f", b"x")
    assert isinstance(info.value, OSError)  # with the directory as its file name
    assert info.value.filename == str(missing) and info.value.strerror


def test_the_directory_is_synced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(durable, "fsync_directory", lambda d: synced.append(Path(d)))
    write_atomic(tmp_path / "f", b"x")
    assert synced == [tmp_path] and (tmp_path / "f").exists()


def test_a_file_system_that_cannot_sync_a_directory_is_let_be(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def no_dir_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_sync)
    write_atomic(tmp_path / "f", b"x")
    assert (tmp_path / "f").read_bytes() == b"x"

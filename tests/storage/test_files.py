"""write_atomically: a file is replaced whole or left as it was."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from openlearner.storage.files import write_atomically


def test_a_file_is_written_flushed_and_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "new" / "folder" / "file.bin"
    write_atomically(target, lambda handle: handle.write(b"first"))
    assert target.read_bytes() == b"first"
    assert len(synced) == 4  # each new folder in its parent, the file before its rename, its folder
    write_atomically(target, lambda handle: handle.write(b"second"))
    assert target.read_bytes() == b"second"
    assert len(synced) == 6
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_a_written_file_gets_the_permissions_any_new_file_gets(tmp_path: Path) -> None:
    """Readable by whoever the umask lets read (a log shipper, a training job), not private."""
    umask = os.umask(0o022)
    try:
        target = tmp_path / "file.bin"
        write_atomically(target, lambda handle: handle.write(b"x"))
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_a_write_that_fails_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"kept")

    def fails(handle: Any) -> None:
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomically(target, fails)
    assert target.read_bytes() == b"kept"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]

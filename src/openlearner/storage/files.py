"""Files written whole or not at all, and kept once written."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomically"]


def write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace ``target`` with what ``write`` writes to the file handle it is given.

    The bytes go to a temporary file in the same folder, which is flushed to disk and then
    renamed over ``target`` (and the folder flushed too, as is each folder this creates on the
    way): a reader sees the old file or the whole new one, a crash or power loss right after
    leaves one of them, and a failed write (a full disk, an error in ``write``) removes the
    temporary file and leaves ``target`` as it was. The file gets the permissions any new file
    gets (``0666`` less the umask).
    """
    _make_folder(target.parent)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def _make_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents, each one's entry flushed to disk in its parent."""
    if folder.is_dir():
        return
    _make_folder(folder.parent)
    # Made meanwhile by another writer, whose flush may not have come yet (or a file is there,
    # which the open then says): flushed here either way.
    with contextlib.suppress(FileExistsError):
        folder.mkdir()
    _sync_folder(folder.parent)


def _sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename, a new folder) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a system that cannot open folders (Windows) keeps renames by itself
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file itself is on disk
    finally:
        os.close(fd)

"""What a forked child does with the handles it inherited from its parent: nothing."""

from __future__ import annotations

import ctypes

__all__ = ["keep_forever"]


def keep_forever(handle: object) -> None:
    """Never free ``handle`` in this process.

    A handle a forked child inherited (a DuckDB database, a SQLite connection) belongs to the
    parent's threads, locks and files. Freeing it in the child, at exit say, runs its teardown
    over threads that did not survive the fork (DuckDB then crashes the child) or over file
    locks that are the parent's (SQLite warns against carrying a connection across a fork).
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(handle))

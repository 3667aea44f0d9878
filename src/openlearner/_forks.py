"""What a forked child does with the handles it inherited from its parent: nothing.

Stores that hold connections register with :func:`track`; in a forked child each one's
``_after_fork`` runs before anything else can use it, and lets go of what it inherited
(through :func:`keep_forever`) so that its next call opens handles of its own.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from typing import Protocol

__all__ = ["keep_forever", "track"]


class _Inheritor(Protocol):
    def _after_fork(self) -> None: ...


_TRACKED: weakref.WeakSet[_Inheritor] = weakref.WeakSet()


def track(store: _Inheritor) -> None:
    """Call ``store._after_fork()`` in every child forked from this process while it lives."""
    _TRACKED.add(store)


def keep_forever(handle: object) -> None:
    """Never free ``handle`` in this process.

    A handle a forked child inherited (a DuckDB database, a SQLite connection) belongs to the
    parent's threads, locks and files. Freeing it in the child, at exit say, runs its teardown
    over threads that did not survive the fork (DuckDB then crashes the child) or over file
    locks that are the parent's (SQLite warns against carrying a connection across a fork).
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(handle))


def _forked() -> None:
    for store in list(_TRACKED):
        store._after_fork()


os.register_at_fork(after_in_child=_forked)

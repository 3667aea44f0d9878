"""What every ``learner`` command shares: opening the workspace named on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from openlearner.workspace import Workspace

__all__ = ["open_workspace"]


def open_workspace(ctx: click.Context, *, create: bool = False) -> Workspace:
    """The workspace named by ``--home`` (or the settings); missing ones are an error unless ``create``."""
    from openlearner.workspace import Workspace

    home: Path | None = ctx.find_root().params.get("home")
    workspace = Workspace.open(home, create=create)
    ctx.call_on_close(workspace.close)  # closed when the command ends, also when it fails
    return workspace

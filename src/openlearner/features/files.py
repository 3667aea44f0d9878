"""Definitions kept in a Python file, as ``learner features plan|apply FILE`` reads them."""

from __future__ import annotations

import runpy
import traceback
from pathlib import Path

from openlearner.errors import Invalid, NotFound
from openlearner.features.definitions import Entity, FeatureService, FeatureView, Source, flatten

__all__ = ["definitions_from_file"]

_KINDS = (Entity, Source, FeatureView, FeatureService)


def definitions_from_file(path: str | Path) -> list[object]:
    """Run a Python file and return the definitions it binds at module level, in order.

    Lists and tuples of definitions count too; the sources and entities of each view are
    included, so a file need only name its views and services.
    """
    file = Path(path)
    if not file.is_file():
        raise NotFound(f"no definitions file {file}")
    try:
        names = runpy.run_path(str(file), run_name="__openlearner_definitions__")
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise Invalid(f"definitions file {file} failed{where}: {type(exc).__name__}: {exc}") from None
    found: list[object] = []
    for value in names.values():
        candidates = flatten(value) if isinstance(value, list | tuple) else [value]
        for item in candidates:
            if isinstance(item, _KINDS) and not any(item is seen for seen in found):
                if isinstance(item, FeatureView):
                    found.extend(e for e in item.entities if not any(e is seen for seen in found))
                    if not any(item.source is seen for seen in found):
                        found.append(item.source)
                found.append(item)
    if not found:
        raise Invalid(f"{file} defines no Entity, Source, FeatureView or FeatureService at module level")
    return found

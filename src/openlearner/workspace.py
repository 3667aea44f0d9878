"""The workspace: the composition root that opens every store named by the settings."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from openlearner.config import Settings
from openlearner.errors import Corrupt, Invalid, NotFound
from openlearner.features.catalog import Catalog
from openlearner.features.offline.duckdb import DuckDBOfflineStore
from openlearner.features.online.base import open_online_store
from openlearner.features.store import FeatureStore
from openlearner.flow.facade import Flow
from openlearner.registry.store import ModelRegistry
from openlearner.storage.artifacts.base import open_artifact_store
from openlearner.storage.metadata import MetadataDB

__all__ = ["MARKER", "Workspace"]

MARKER = "workspace.json"


class Workspace:
    """One team's OpenLearner state: ``.features``, ``.registry`` and ``.flow`` over shared stores."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id = _identify(settings.home / MARKER)
        """Unique and permanent (in ``workspace.json``); names this workspace's keys on shared servers."""
        self.db = MetadataDB(settings.resolved_database_url)
        self.db.migrate()
        self.artifacts = open_artifact_store(settings.resolved_artifact_uri)
        self.features = FeatureStore(
            Catalog(self.db),
            DuckDBOfflineStore(log_dir=settings.data_dir / "pushed"),
            open_online_store(settings, self.id),
        )
        self.registry = ModelRegistry(self.db, self.artifacts, self.features)
        self.flow = Flow(
            self.db,
            self.artifacts,
            settings.resolved_artifact_uri,
            executor=settings.executor,
            ray_address=settings.ray_address,
        )

    @property
    def root(self) -> Path:
        """The workspace folder."""
        return self.settings.home

    @classmethod
    def open(
        cls, path: str | Path | None = None, *, create: bool = True, settings: Settings | None = None
    ) -> Workspace:
        """Open the workspace at ``path`` (default: ``OPENLEARNER_HOME`` or ``./.openlearner``).

        A workspace made by an older OpenLearner has its schema migrated. With
        ``create=False`` a missing workspace raises ``NotFound`` instead of being created.
        """
        settings = _settings(path, settings)
        marker = settings.home / MARKER
        if not marker.is_file():
            if not create:
                raise NotFound(f"no OpenLearner workspace at {settings.home}; create one with `learner init`")
            return cls.init(settings=settings)
        return cls(settings)

    @classmethod
    def init(cls, path: str | Path | None = None, *, settings: Settings | None = None) -> Workspace:
        """Create (or re-open) a workspace: folders, the metadata schema and a marker file."""
        settings = _settings(path, settings)
        home = settings.home
        if home.exists() and not home.is_dir():
            raise Invalid(f"cannot create a workspace at {home}: a file is in the way")
        home.mkdir(parents=True, exist_ok=True)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings)  # writes the marker first, when it is missing

    def close(self) -> None:
        """Release database connections."""
        self.features.online_store.close()
        self.features.offline.close()
        self.db.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"


def _identify(marker: Path) -> str:
    """The workspace id in ``marker``; a missing marker is created, one without an id given one."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        from openlearner import __version__

        new = {"id": uuid.uuid4().hex, "created_at": datetime.now(UTC).isoformat(), "created_by": __version__}
        # Exclusive: of two processes creating a workspace at once, both must end with one id.
        return new["id"] if _publish(marker, new, exclusive=True) else _identify(marker)
    meta: object
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise Corrupt(f"{marker} is not a JSON object; restore it from a backup (it holds the workspace id)")
    if "id" not in meta:
        # Made by an older OpenLearner. Derived from the file, not random, so processes that
        # upgrade it at the same time agree on the id.
        meta["id"] = uuid.uuid5(uuid.NAMESPACE_URL, f"{marker.resolve()}\n{text}").hex
        _publish(marker, meta, exclusive=False)
    return str(meta["id"])


def _publish(marker: Path, meta: Mapping[str, object], *, exclusive: bool) -> bool:
    """Write ``marker`` whole (temporary file, then link or rename); False if ``exclusive`` and it exists."""
    tmp = marker.with_name(f".{marker.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(meta))
    try:
        if not exclusive:
            tmp.replace(marker)
            return True
        try:
            os.link(tmp, marker)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _settings(path: str | Path | None, settings: Settings | None) -> Settings:
    if settings is not None and path is not None:
        return settings.model_copy(update={"home": Path(path).expanduser().absolute()})
    if settings is not None:
        return settings
    return Settings(home=Path(path)) if path is not None else Settings()

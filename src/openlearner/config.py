"""Settings: the one place that reads the environment (prefix ``OPENLEARNER_``).

Every default makes a working embedded setup in ``.openlearner/`` under the current
directory, or under ``OPENLEARNER_HOME``. Everything else in OpenLearner receives plain
values from a :class:`Settings` object instead of reading the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

DEFAULT_HOME = ".openlearner"


class Settings(BaseSettings):
    """Where a workspace keeps its state and which backends it uses."""

    model_config = SettingsConfigDict(env_prefix="OPENLEARNER_", extra="ignore")

    home: Path = Path(DEFAULT_HOME)
    """Workspace folder; the stores below default to places inside it."""
    database_url: str | None = None
    """SQLAlchemy URL of the metadata database (default: ``sqlite:///<home>/meta.db``)."""
    artifact_uri: str | None = None
    """Artifact store location: a folder or ``s3://bucket/prefix`` (default: ``<home>/artifacts``)."""
    s3_endpoint_url: str | None = None
    """Endpoint of S3-compatible storage (MinIO, Ceph...) for an ``s3://`` artifact_uri (default: AWS)."""
    s3_region: str | None = None
    """Region of the ``s3://`` artifact store's bucket (default: ``us-east-1``)."""
    online_store: Literal["sqlite", "redis"] = "sqlite"
    """Online feature store backend by short name."""
    online_path: Path | None = None
    """SQLite online store file (default: ``<home>/online.db``)."""
    online_cache_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    """(view, entity) answers, absent ones included, that the SQLite online store keeps decoded
    between reads while nothing else writes to the file, one set for every thread of a
    process (at most 10 million; 0: read every key from the file each time)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis server of the ``redis`` online store."""
    redis_namespace: str | None = None
    """Prefix of every Redis key (default: ``openlearner:<workspace id>``), so workspaces can share a server."""
    redis_spin_us: int = Field(default=200, ge=0, le=10_000)
    """Microseconds an online read polls for Redis's reply before it sleeps in ``recv``
    (0: never poll). Polling answers a local server's reply as it lands, where waking a
    sleeping thread costs tens of microseconds; a read whose replies keep coming later stops
    polling for a while on its own."""
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    auth_token: str | None = None
    """Bearer token the predictor requires on every route but health, when set."""

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def resolved_database_url(self) -> str:
        """The metadata database URL, defaulting to a SQLite file in the workspace."""
        return self.database_url or f"sqlite:///{self.home / 'meta.db'}"

    @property
    def resolved_artifact_uri(self) -> str:
        """The artifact store location, defaulting to a folder in the workspace.

        An ``s3://`` URI carries ``s3_endpoint_url`` and ``s3_region`` in its query, unless it names its own.
        """
        uri = self.artifact_uri or str(self.home / "artifacts")
        if uri.startswith("s3://"):
            options = {"endpoint_url": self.s3_endpoint_url, "region": self.s3_region}
            extra = urlencode({k: v for k, v in options.items() if v and f"{k}=" not in uri})
            if extra:
                uri = f"{uri}{'&' if '?' in uri else '?'}{extra}"
        return uri

    @property
    def resolved_online_path(self) -> Path:
        """The SQLite online store file."""
        return self.online_path or self.home / "online.db"

    @property
    def data_dir(self) -> Path:
        """Where the workspace keeps data it writes itself (event logs, prediction logs)."""
        return self.home / "data"

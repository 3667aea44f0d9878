"""Storage: the metadata database (SQLAlchemy 2 + Alembic) and content-addressed artifacts."""

from openlearner.storage.artifacts import ArtifactStore, LocalArtifactStore, open_artifact_store
from openlearner.storage.metadata import MetadataDB

__all__ = ["ArtifactStore", "LocalArtifactStore", "MetadataDB", "open_artifact_store"]

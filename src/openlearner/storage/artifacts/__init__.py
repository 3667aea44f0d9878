"""Content-addressed artifact stores behind one interface (local folder; S3 in #6)."""

from openlearner.storage.artifacts.base import ArtifactStore, digest_of, open_artifact_store
from openlearner.storage.artifacts.local import LocalArtifactStore

__all__ = ["ArtifactStore", "LocalArtifactStore", "digest_of", "open_artifact_store"]

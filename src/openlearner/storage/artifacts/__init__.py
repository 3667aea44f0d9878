"""Content-addressed artifact stores behind one interface: a local folder and S3 (boto3, lazily)."""

from openlearner.storage.artifacts.base import ArtifactStore, digest_of, open_artifact_store
from openlearner.storage.artifacts.local import LocalArtifactStore
from openlearner.storage.artifacts.s3 import S3ArtifactStore

__all__ = ["ArtifactStore", "LocalArtifactStore", "S3ArtifactStore", "digest_of", "open_artifact_store"]

"""The artifact store seam: bytes in, sha256 digest out; reads verify the digest.

Implementations: a local folder (:class:`~openlearner.storage.artifacts.local.LocalArtifactStore`)
and S3-compatible object storage (:class:`~openlearner.storage.artifacts.s3.S3ArtifactStore`),
both held to one conformance suite.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from openlearner.errors import Invalid, NotFound

__all__ = ["ArtifactStore", "artifact_bytes", "check_digest", "digest_of", "open_artifact_store"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    """The sha256 hex digest that names ``data`` in every artifact store."""
    return hashlib.sha256(data).hexdigest()


def artifact_bytes(data: bytes | Path) -> bytes:
    """What ``put`` stores: ``data`` itself, or the contents of the file it names."""
    if isinstance(data, Path | str):
        source = Path(data)
        if not source.is_file():
            raise NotFound(f"cannot store {source}: no such file")
        return source.read_bytes()
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise Invalid(f"an artifact is bytes or a file path, not {type(data).__name__}")


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a sha256 hex digest, else raise :class:`Invalid`."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise Invalid(f"{digest!r} is not an artifact digest (64 lowercase hex characters of sha256)")
    return digest


@runtime_checkable
class ArtifactStore(Protocol):
    """Immutable blobs named by the sha256 of their bytes."""

    def put(self, data: bytes | Path) -> str:
        """Store ``data`` (bytes or a file) atomically and return its sha256 digest."""
        ...

    def get(self, digest: str) -> bytes:
        """Return the bytes named ``digest``; raise ``NotFound`` or ``Corrupt``."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether an artifact named ``digest`` is stored (without verifying it)."""
        ...


def open_artifact_store(
    uri: str, *, endpoint_url: str | None = None, region: str | None = None
) -> ArtifactStore:
    """Open the artifact store named by ``uri``: a local path, ``file://`` URI or ``s3://bucket/prefix``.

    ``endpoint_url`` and ``region`` apply to S3 (an ``?endpoint_url=`` in the URI wins).
    """
    from openlearner.storage.artifacts.local import LocalArtifactStore

    if uri.startswith("s3://"):
        from openlearner.storage.artifacts.s3 import S3ArtifactStore

        return S3ArtifactStore.from_uri(uri, endpoint_url=endpoint_url, region=region)
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise Invalid(
            f"artifact_uri scheme {scheme!r} is not supported; use a local folder path or s3://bucket/prefix"
        )
    return LocalArtifactStore(Path(uri.removeprefix("file://")))

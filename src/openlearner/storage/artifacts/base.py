"""The artifact store seam: bytes in, sha256 digest out; reads verify the digest."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from openlearner.errors import Invalid

__all__ = ["ArtifactStore", "check_digest", "digest_of", "open_artifact_store"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest_of(data: bytes) -> str:
    """The sha256 hex digest that names ``data`` in every artifact store."""
    return hashlib.sha256(data).hexdigest()


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


def open_artifact_store(uri: str) -> ArtifactStore:
    """Open the artifact store named by ``uri`` (a local path or ``file://`` URI)."""
    from openlearner.storage.artifacts.local import LocalArtifactStore

    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise Invalid(f"artifact_uri scheme {scheme!r} is not supported yet; use a local folder path")
    return LocalArtifactStore(Path(uri.removeprefix("file://")))

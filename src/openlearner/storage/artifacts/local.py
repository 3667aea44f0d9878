"""Artifacts in a local folder: ``<root>/sha256/<2 hex>/<62 hex>``, written atomically."""

from __future__ import annotations

import hashlib
from pathlib import Path

from openlearner.errors import Corrupt, NotFound
from openlearner.storage.artifacts.base import artifact_bytes, check_digest, digest_of
from openlearner.storage.files import write_atomically

__all__ = ["LocalArtifactStore"]

_CHUNK = 1 << 20


class LocalArtifactStore:
    """A content-addressed folder; a write is a temp file in the same folder, then a rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest[2:]

    def put(self, data: bytes | Path) -> str:
        """Store ``data`` and return its sha256; storing the same bytes twice is a no-op."""
        payload = artifact_bytes(data)
        digest = digest_of(payload)
        target = self._path(digest)
        if target.exists() and self._verified(target, digest):
            return digest
        write_atomically(target, lambda handle: handle.write(payload))
        return digest

    def get(self, digest: str) -> bytes:
        """Read and verify the artifact; a mismatching hash raises :class:`Corrupt`."""
        path = self._path(digest)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"artifact {digest} is not in the store at {self.root}") from None
        if digest_of(payload) != digest:
            raise Corrupt(
                f"artifact {digest} at {path} is corrupt: its sha256 no longer matches; "
                "restore it from a replica or register the model again"
            )
        return payload

    def exists(self, digest: str) -> bool:
        """Whether the artifact file is present."""
        return self._path(digest).is_file()

    @staticmethod
    def _verified(path: Path, digest: str) -> bool:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha.update(chunk)
        return sha.hexdigest() == digest

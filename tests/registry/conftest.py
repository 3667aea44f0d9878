"""Registry fixtures: a registry on each metadata backend (the S3 endpoint is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openlearner.registry import ModelRegistry
from openlearner.storage import LocalArtifactStore, MetadataDB


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Iterator[ModelRegistry]:
    """A registry on SQLite, then on PostgreSQL, with a local artifact store."""
    db = MetadataDB(database_url)
    db.migrate()
    yield ModelRegistry(db, LocalArtifactStore(tmp_path / "artifacts"))
    db.dispose()

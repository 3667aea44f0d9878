"""Registry fixtures: a registry on each metadata backend, and an S3 endpoint (moto) started here."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible endpoint: a moto server on 127.0.0.1 (random port) for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ModuleNotFoundError as exc:
        reason = f"moto[server] is not installed ({exc.name})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "openlearner-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "openlearner-test")
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()

"""Shared fixtures: workspaces in temporary folders, the PostgreSQL server, real data paths.

Tests marked ``postgres`` (or ``redis``) run against the local servers. Under ``CI=true`` an
unreachable server fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from openlearner import Settings, Workspace

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "OPENLEARNER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("OPENLEARNER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def unavailable(reason: str) -> NoReturn:
    """Skip for a missing service or data set; under CI that is a failure instead."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible endpoint: a moto server on 127.0.0.1 (random port) for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ModuleNotFoundError as exc:
        unavailable(f"moto[server] is not installed ({exc.name})")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "openlearner-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "openlearner-test")
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for an embedded workspace in a fresh temporary folder."""
    return Settings(home=tmp_path / "ws")


@pytest.fixture
def workspace(settings: Settings) -> Iterator[Workspace]:
    """A fresh embedded workspace (SQLite metadata, local artifacts, SQLite online store)."""
    ws = Workspace.init(settings=settings)
    yield ws
    ws.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to a private, empty schema on the local PostgreSQL server (dropped afterwards)."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as con:
            con.execute(sa.text("SELECT 1"))
    except Exception as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {type(exc).__name__}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with engine.begin() as con:
        con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    with engine.begin() as con:
        con.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis server's URL (``OPENLEARNER_TEST_REDIS_URL``), or skip (fail under CI)."""
    try:
        import redis
    except ImportError:
        unavailable("the redis package is not installed (pip install 'openlearner[redis]')")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {type(exc).__name__}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A metadata database URL: SQLite in a temp folder, then a private PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def shared_data() -> Callable[[str], Path]:
    """Finds a real data set by its path under ../shared/data; skips (fails under CI) when it is absent.

    A fixture because test modules cannot import a conftest under ``--import-mode=importlib``.
    """

    def find(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            unavailable(f"real data set {relative} is not at {path}")
        return path

    return find

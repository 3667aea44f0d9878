"""Artifact stores for the conformance suite: a local folder, and S3 on a moto server started here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openlearner.storage import LocalArtifactStore
from openlearner.storage.artifacts.base import ArtifactStore


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


def s3_bucket(endpoint: str) -> tuple[Any, str]:
    """A boto3 client on ``endpoint`` and a fresh bucket."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"ol-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@dataclass
class StoreUnderTest:
    """A store plus the backdoors a conformance test needs: damage or remove what it holds."""

    store: ArtifactStore
    overwrite: Callable[[str, bytes], None]
    remove: Callable[[str], None]
    count: Callable[[], int]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def artifact_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    """Each artifact store implementation, empty."""
    if request.param == "local":
        local = LocalArtifactStore(tmp_path / "artifacts")

        def path(digest: str) -> Path:
            return local.root / "sha256" / digest[:2] / digest[2:]

        return StoreUnderTest(
            local,
            lambda d, data: path(d).write_bytes(data),
            lambda d: path(d).unlink(),
            lambda: sum(1 for p in local.root.rglob("*") if p.is_file()),
        )
    from openlearner.storage.artifacts.s3 import S3ArtifactStore

    endpoint = request.getfixturevalue("s3_endpoint")
    client, bucket = s3_bucket(endpoint)
    s3 = S3ArtifactStore(bucket, "team/models", endpoint_url=endpoint)

    def count() -> int:
        return int(client.list_objects_v2(Bucket=bucket).get("KeyCount", 0))

    return StoreUnderTest(
        s3,
        lambda d, data: client.put_object(Bucket=bucket, Key=s3.key(d), Body=data),
        lambda d: client.delete_object(Bucket=bucket, Key=s3.key(d)),
        count,
    )

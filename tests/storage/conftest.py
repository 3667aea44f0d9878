"""Artifact stores for the conformance suite: a local folder, and S3 on the moto server of tests/conftest.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openlearner.storage import LocalArtifactStore
from openlearner.storage.artifacts.base import ArtifactStore


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

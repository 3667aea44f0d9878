"""Artifact stores: one conformance suite over the local folder and S3 (moto), plus backend specifics."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from openlearner.errors import Corrupt, Invalid, NotFound
from openlearner.storage import LocalArtifactStore, open_artifact_store
from openlearner.storage.artifacts.s3 import S3ArtifactStore

# -- conformance: every store --------------------------------------------------------------


def test_put_returns_sha256_and_get_returns_the_bytes(artifact_store: Any) -> None:
    store = artifact_store.store
    digest = store.put(b"hello onnx")
    assert digest == hashlib.sha256(b"hello onnx").hexdigest()
    assert store.exists(digest)
    assert store.get(digest) == b"hello onnx"


def test_put_a_file_and_put_twice_is_idempotent(artifact_store: Any, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"\x00\x01graph")
    first = artifact_store.store.put(source)
    second = artifact_store.store.put(b"\x00\x01graph")
    assert first == second
    assert artifact_store.count() == 1


def test_corrupted_artifact_is_refused_on_read(artifact_store: Any) -> None:
    digest = artifact_store.store.put(b"original bytes")
    artifact_store.overwrite(digest, b"tampered bytes")
    with pytest.raises(Corrupt, match="sha256 no longer matches"):
        artifact_store.store.get(digest)


def test_put_repairs_a_corrupted_copy(artifact_store: Any) -> None:
    digest = artifact_store.store.put(b"original bytes")
    artifact_store.overwrite(digest, b"junk")
    assert artifact_store.store.put(b"original bytes") == digest
    assert artifact_store.store.get(digest) == b"original bytes"


def test_missing_artifact_is_not_found(artifact_store: Any) -> None:
    store = artifact_store.store
    with pytest.raises(NotFound, match="not in the store"):
        store.get("0" * 64)
    assert not store.exists("0" * 64)
    digest = store.put(b"soon gone")
    artifact_store.remove(digest)
    assert not store.exists(digest)
    with pytest.raises(NotFound, match="not in the store"):
        store.get(digest)


@pytest.mark.parametrize("bad", ["abc", "G" * 64, "../" + "0" * 61, "0" * 63, 42])
def test_malformed_digest_is_invalid(artifact_store: Any, bad: object) -> None:
    with pytest.raises(Invalid, match="digest"):
        artifact_store.store.get(bad)
    with pytest.raises(Invalid, match="digest"):
        artifact_store.store.exists(bad)


def test_put_rejects_other_types_and_missing_files(artifact_store: Any, tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="bytes or a file path"):
        artifact_store.store.put(12)
    with pytest.raises(NotFound, match="no such file"):
        artifact_store.store.put(tmp_path / "absent.onnx")
    assert artifact_store.count() == 0


def test_many_artifacts_keep_apart(artifact_store: Any) -> None:
    blobs = [bytes([i]) * (i + 1) for i in range(20)] + [b"", b"\x00" * 70_000]
    digests = [artifact_store.store.put(b) for b in blobs]
    assert len(set(digests)) == len(blobs)
    assert [artifact_store.store.get(d) for d in digests] == blobs


# -- local specifics -----------------------------------------------------------------------


def test_a_failed_local_write_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    store = LocalArtifactStore(tmp_path / "artifacts")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"never lands")
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


# -- S3 specifics --------------------------------------------------------------------------


@pytest.mark.s3
def test_a_failed_s3_write_leaves_no_object(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ConnectionClosedError

    client, bucket = _bucket(s3_endpoint)
    store = S3ArtifactStore(bucket, endpoint_url=s3_endpoint)

    def dropped(**_: Any) -> None:
        raise ConnectionClosedError(endpoint_url=s3_endpoint)

    monkeypatch.setattr(store.client, "put_object", dropped)
    from openlearner.errors import Unavailable

    with pytest.raises(Unavailable, match="cannot reach S3"):
        store.put(b"never lands")
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.s3
def test_s3_store_by_uri_with_settings(s3_endpoint: str) -> None:
    from openlearner import Settings

    client, bucket = _bucket(s3_endpoint)
    settings = Settings(
        artifact_uri=f"s3://{bucket}/pre/fix", s3_endpoint_url=s3_endpoint, s3_region="eu-west-1"
    )
    store = open_artifact_store(settings.resolved_artifact_uri)
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == (
        bucket,
        "pre/fix",
        s3_endpoint,
        "eu-west-1",
    )
    digest = store.put(b"via settings")
    assert client.get_object(Bucket=bucket, Key=f"pre/fix/sha256/{digest[:2]}/{digest[2:]}")[
        "Body"
    ].read() == (b"via settings")


@pytest.mark.s3
def test_a_bucket_named_bucket_works(s3_endpoint: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="my-bucket")
    store = S3ArtifactStore("my-bucket", endpoint_url=s3_endpoint)
    assert not store.exists("0" * 64)
    assert store.get(store.put(b"in my-bucket")) == b"in my-bucket"


@pytest.mark.s3
def test_a_missing_bucket_says_so(s3_endpoint: str) -> None:
    store = S3ArtifactStore("ol-no-such-bucket", endpoint_url=s3_endpoint)
    with pytest.raises(NotFound, match="bucket 'ol-no-such-bucket' does not exist"):
        store.put(b"x")
    with pytest.raises(NotFound, match="does not exist"):
        store.exists("0" * 64)


def test_an_unreachable_s3_endpoint_is_unavailable() -> None:
    from openlearner.errors import Unavailable

    store = S3ArtifactStore("ol-bucket", endpoint_url="http://127.0.0.1:9")  # discard port: nothing listens
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(Unavailable, match="cannot reach S3"):
        store.get("0" * 64)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gopher://somewhere", "not supported"),
        ("s3://", "not an S3 URI"),
        ("s3://Bad_Bucket/x", "bucket name"),
        ("s3://bucket/x?colour=blue", "unknown option"),
    ],
)
def test_bad_artifact_uris_are_invalid(uri: str, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        open_artifact_store(uri)


def test_open_artifact_store_by_uri(tmp_path: Path) -> None:
    assert isinstance(open_artifact_store(str(tmp_path / "a")), LocalArtifactStore)
    assert isinstance(open_artifact_store(f"file://{tmp_path / 'b'}"), LocalArtifactStore)
    s3 = open_artifact_store("s3://bucket/a/b?endpoint_url=http://127.0.0.1:1&region=eu-west-1")
    assert isinstance(s3, S3ArtifactStore) and s3.endpoint_url == "http://127.0.0.1:1" and s3.prefix == "a/b"


def test_importing_openlearner_does_not_import_boto3() -> None:
    import subprocess
    import sys

    code = "import sys, openlearner.storage, openlearner.workspace; print('boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _bucket(endpoint: str) -> tuple[Any, str]:
    import uuid

    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"ol-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket

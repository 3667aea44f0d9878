"""The local content-addressed artifact store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from openlearner.errors import Corrupt, Invalid, NotFound
from openlearner.storage import LocalArtifactStore, open_artifact_store


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_put_returns_sha256_and_get_returns_the_bytes(store: LocalArtifactStore) -> None:
    digest = store.put(b"hello onnx")
    assert digest == hashlib.sha256(b"hello onnx").hexdigest()
    assert store.exists(digest)
    assert store.get(digest) == b"hello onnx"


def test_put_a_file_and_put_twice_is_idempotent(store: LocalArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"\x00\x01graph")
    first = store.put(source)
    second = store.put(b"\x00\x01graph")
    assert first == second
    files = [p for p in (store.root / "sha256").rglob("*") if p.is_file()]
    assert len(files) == 1


def test_corrupted_artifact_is_refused_on_read(store: LocalArtifactStore) -> None:
    digest = store.put(b"original bytes")
    path = store.root / "sha256" / digest[:2] / digest[2:]
    path.write_bytes(b"tampered bytes")
    with pytest.raises(Corrupt, match="corrupt"):
        store.get(digest)


def test_put_repairs_a_corrupted_copy(store: LocalArtifactStore) -> None:
    digest = store.put(b"original bytes")
    (store.root / "sha256" / digest[:2] / digest[2:]).write_bytes(b"junk")
    assert store.put(b"original bytes") == digest
    assert store.get(digest) == b"original bytes"


def test_missing_artifact_is_not_found(store: LocalArtifactStore) -> None:
    with pytest.raises(NotFound, match="not in the store"):
        store.get("0" * 64)
    assert not store.exists("0" * 64)


@pytest.mark.parametrize("bad", ["abc", "G" * 64, "../" + "0" * 61, "0" * 63, 42])
def test_malformed_digest_is_invalid(store: LocalArtifactStore, bad: object) -> None:
    with pytest.raises(Invalid, match="digest"):
        store.get(bad)  # type: ignore[arg-type]


def test_put_rejects_other_types_and_missing_files(store: LocalArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="bytes or a file path"):
        store.put(12)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="no such file"):
        store.put(tmp_path / "absent.onnx")


def test_a_failed_write_leaves_no_file_behind(
    store: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"never lands")
    leftovers = [p for p in store.root.rglob("*") if p.is_file()]
    assert leftovers == []


def test_open_artifact_store_by_uri(tmp_path: Path) -> None:
    assert isinstance(open_artifact_store(str(tmp_path / "a")), LocalArtifactStore)
    assert isinstance(open_artifact_store(f"file://{tmp_path / 'b'}"), LocalArtifactStore)
    with pytest.raises(Invalid, match="not supported"):
        open_artifact_store("gopher://somewhere")

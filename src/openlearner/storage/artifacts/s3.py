"""Artifacts in S3-compatible object storage: ``s3://bucket/prefix`` → ``<prefix>/sha256/<2 hex>/<62 hex>``.

boto3 is imported on first use only. A write is one ``PutObject`` carrying the bytes'
SHA-256, so the server refuses a body damaged on the way and an object is either whole or
absent (S3 never shows a half-written object); every read is re-hashed. Credentials come
from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role); the endpoint (MinIO, Ceph, moto...) and region from the URI or the settings.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from openlearner.errors import Corrupt, Invalid, NotFound, Unavailable
from openlearner.storage.artifacts.base import artifact_bytes, check_digest, digest_of

__all__ = ["S3ArtifactStore"]


class _NoBucket(NotFound):
    """The bucket itself is missing (not just one object): never read as "artifact absent"."""


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3ArtifactStore:
    """A content-addressed prefix of an S3 bucket (the bucket must exist)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET.match(bucket):
            raise Invalid(
                f"S3 bucket name {bucket!r} is not valid: 3-63 lowercase letters, digits, '.' and '-'"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = client

    @classmethod
    def from_uri(
        cls, uri: str, *, endpoint_url: str | None = None, region: str | None = None
    ) -> S3ArtifactStore:
        """Open ``s3://bucket/prefix[?endpoint_url=...&region=...]`` (the query wins over the arguments)."""
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise Invalid(f"artifact_uri {uri!r} is not an S3 URI; use s3://bucket/prefix")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = sorted(query.keys() - {"endpoint_url", "region"})
        if unknown:
            raise Invalid(
                f"artifact_uri {uri!r} has unknown option(s) {', '.join(unknown)}; use endpoint_url, region"
            )
        return cls(
            parts.netloc,
            parts.path,
            endpoint_url=query.get("endpoint_url", endpoint_url),
            region=query.get("region", region),
        )

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3ArtifactStore('s3://{self.bucket}/{self.prefix}'{where})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use."""
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ModuleNotFoundError as exc:
                raise Unavailable(
                    "the S3 artifact store needs boto3; install it with: pip install 'openlearner[s3]'"
                ) from exc
            config = Config(
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
            )
            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region or "us-east-1", config=config
            )
        return self._client

    def key(self, digest: str) -> str:
        """The object key of ``digest``."""
        check_digest(digest)
        name = f"sha256/{digest[:2]}/{digest[2:]}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, data: bytes | Path) -> str:
        """Store ``data`` and return its sha256; storing the same bytes twice is a no-op (a bad copy is replaced)."""
        payload = artifact_bytes(data)
        digest = digest_of(payload)
        if self._intact(digest):
            return digest
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()  # S3 checks it on upload
        self._call(
            "put",
            digest,
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(digest),
                Body=payload,
                ChecksumSHA256=checksum,
                Metadata={"sha256": digest},
            ),
        )
        return digest

    def get(self, digest: str) -> bytes:
        """Read and verify the artifact; a mismatching hash raises :class:`Corrupt`."""
        key = self.key(digest)
        response = self._call("get", digest, lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        payload: bytes = response["Body"].read()
        if digest_of(payload) != digest:
            raise Corrupt(
                f"artifact {digest} at s3://{self.bucket}/{key} is corrupt: its sha256 no longer matches; "
                "restore it from a replica or register the model again"
            )
        return payload

    def exists(self, digest: str) -> bool:
        """Whether the object is present (without reading it)."""
        key = self.key(digest)
        try:
            self._call("head", digest, lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except _NoBucket:
            raise
        except NotFound:
            return False
        return True

    def _intact(self, digest: str) -> bool:
        try:
            self.get(digest)
        except _NoBucket:
            raise
        except (NotFound, Corrupt):
            return False
        return True

    def _call(self, what: str, digest: str, action: Any) -> Any:
        """Run one S3 request, turning botocore's errors into OpenLearner's."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"s3://{self.bucket}/{self.prefix}" + (
            f" at {self.endpoint_url}" if self.endpoint_url else ""
        )
        try:
            return action()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket" or (what == "head" and code in _MISSING and not self._bucket_exists()):
                raise _NoBucket(
                    f"the S3 bucket {self.bucket!r} does not exist; create it first ({where})"
                ) from None
            if code in _MISSING:
                raise NotFound(f"artifact {digest} is not in the store at {where}") from None
            if code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
                raise Corrupt(
                    f"S3 refused artifact {digest}: the bytes were damaged on the way; retry"
                ) from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise Unavailable(f"S3 denied access to {where} ({code}); check the credentials") from None
            raise Unavailable(f"S3 {what} of artifact {digest} failed at {where}: {code or exc}") from None
        except NoCredentialsError:
            raise Unavailable(
                f"no S3 credentials for {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)"
            ) from None
        except BotoCoreError as exc:
            raise Unavailable(f"cannot reach S3 at {where}: {exc}") from None

    def _bucket_exists(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            return False
        return True

"""The trainer's view of the object store: pure boto3, so AWS S3, MinIO, Ceph RGW and nanio
work unchanged. botocore errors are mapped to :mod:`cloud_trainer.errors` here, once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloud_trainer.config import StorageSection
from cloud_trainer.errors import (
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
    StoragePermissionError,
)
from shared.digests import file_sha256
from shared.infra.s3 import make_s3_client
from shared.object_keys import validate_object_key

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime
    etag: str


class ObjectStore:
    """One bucket. Every key is validated before use, whatever its origin."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    @classmethod
    def from_config(cls, section: StorageSection) -> ObjectStore:
        return cls(make_s3_client(section.target(), max_pool=16), section.bucket)

    # ----------------------------------------------------------------- errors
    def _error(self, exc: Exception, action: str, key: str) -> StorageError:
        where = f"{action} s3://{self.bucket}/{key}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _NOT_FOUND or status == "404":
                if code == "NoSuchBucket":
                    return StorageError(f"{where}: bucket {self.bucket!r} does not exist")
                return ObjectNotFoundError(f"{where}: no such object")
            if code in _DENIED or status == "403":
                return StoragePermissionError(
                    f"{where}: access denied ({code}); check the credentials and that the bucket "
                    "policy grants s3:ListBucket, s3:GetObject and s3:PutObject on it"
                )
            if code in _PRECONDITION or status == "412":
                return PreconditionFailedError(f"{where}: precondition failed, object changed")
            return StorageError(f"{where}: {code or status}: {exc}")
        return StorageError(f"{where}: {exc}")

    # ----------------------------------------------------------------- reading
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (paginated); keys that fail validation are skipped."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    try:
                        validate_object_key(key)
                    except ValueError:
                        continue
                    yield ObjectInfo(
                        key=key,
                        size=int(item.get("Size", 0)),
                        last_modified=item["LastModified"],
                        etag=str(item.get("ETag", "")),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", prefix) from exc

    def get(self, key: str, *, max_bytes: int | None = None) -> tuple[bytes, str]:
        """(body, etag); refuses bodies over ``max_bytes`` before reading them."""
        validate_object_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            length = int(response.get("ContentLength", 0))
            if max_bytes is not None and length > max_bytes:
                response["Body"].close()
                raise StorageError(
                    f"s3://{self.bucket}/{key} is {length} bytes, over the {max_bytes} byte limit"
                )
            body = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "get", key) from exc
        return bytes(body), str(response.get("ETag", ""))

    def exists(self, key: str) -> bool:
        validate_object_key(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, "head", key)
            if isinstance(error, ObjectNotFoundError):
                return False
            raise error from exc
        return True

    def download(self, key: str, path: Path, *, sha256: str | None = None) -> Path:
        """Download to ``path`` via a temporary file; verify the digest when one is given."""
        validate_object_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            self._client.download_file(self.bucket, key, str(part))
        except (ClientError, BotoCoreError) as exc:
            part.unlink(missing_ok=True)
            raise self._error(exc, "download", key) from exc
        if sha256 is not None:
            actual = file_sha256(part)
            if actual != sha256:
                part.unlink(missing_ok=True)
                raise StorageError(
                    f"s3://{self.bucket}/{key}: sha256 {actual} does not match expected {sha256}"
                )
        part.replace(path)
        return path

    # ----------------------------------------------------------------- writing
    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        """Write ``body``; with ``if_match``/``if_none_match`` the write is conditional and a
        lost race raises :class:`PreconditionFailedError`. Returns the new ETag."""
        validate_object_key(key)
        extra: dict[str, str] = {}
        if if_match is not None:
            extra["IfMatch"] = if_match
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        try:
            response = self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **extra
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "put", key) from exc
        return str(response.get("ETag", ""))

    def upload(self, path: Path, key: str) -> None:
        validate_object_key(key)
        try:
            self._client.upload_file(str(path), self.bucket, key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "upload", key) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path} to upload it: {exc}") from exc

    def delete(self, key: str) -> None:
        validate_object_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "delete", key) from exc

    def create_bucket(self) -> None:
        """Create the bucket if it is missing (demo and benchmarks; production buckets are
        made by whoever owns the account, with their policies)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError:
            pass
        except BotoCoreError as exc:
            raise self._error(exc, "head", "") from exc
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "create bucket", "") from exc

    def supports_conditional_writes(self, probe_key: str) -> bool:
        """Whether the server enforces If-None-Match (AWS S3 and moto do; some S3 look-alikes
        silently ignore it, which would let concurrent registry writers lose entries)."""
        self.put(probe_key, b"probe")
        try:
            self.put(probe_key, b"probe", if_none_match=True)
        except PreconditionFailedError:
            return True
        return False

"""Archive objects in S3: every one is uploaded with its SHA-256 and read back before it counts.

S3 stores the SHA-256 given at upload (AWS rejects a body that does not match it), so a
manifest can later be checked against the objects with a HEAD request, which also works
once lifecycle rules have moved them to Glacier.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from resources.storage import S3Storage

_CHUNK = 1 << 20


class ArchiveMismatch(RuntimeError):
    """An archive object differs from what was written or recorded; the message says how."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "sha256": self.sha256}


def sha256_base64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def put_verified(
    s3: S3Storage, path: Path, key: str, sha256: str, content_type: str
) -> StoredObject:
    """Upload a local file with its checksum, then read it back and compare."""
    size = path.stat().st_size
    with path.open("rb") as body:
        s3.client.put_object(
            Bucket=s3.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=sha256_base64(sha256),
        )
    expected = StoredObject(key, size, sha256)
    verify_by_reading(s3, expected)
    return expected


def copy_verified(s3: S3Storage, source_bucket: str, source_key: str, key: str) -> StoredObject:
    """Server-side copy (no download through us), then both objects read back: the copy's
    SHA-256 must be the source's, since the source is deleted on the strength of it."""
    s3.client.copy_object(
        Bucket=s3.bucket,
        Key=key,
        CopySource={"Bucket": source_bucket, "Key": source_key},
        ChecksumAlgorithm="SHA256",
        MetadataDirective="COPY",
    )
    size, sha256 = read_digest(s3, key)
    source_size, source_sha256 = read_digest(s3, source_key, source_bucket)
    if (size, sha256) != (source_size, source_sha256):
        raise ArchiveMismatch(
            f"s3://{s3.bucket}/{key}: copy has {size} bytes with SHA-256 {sha256}, source"
            f" s3://{source_bucket}/{source_key} has {source_size} bytes with SHA-256"
            f" {source_sha256}"
        )
    return StoredObject(key, size, sha256)


def read_digest(s3: S3Storage, key: str, bucket: str | None = None) -> tuple[int, str]:
    body = s3.client.get_object(Bucket=bucket or s3.bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    size = 0
    for chunk in body.iter_chunks(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def verify_by_reading(s3: S3Storage, expected: StoredObject) -> None:
    size, sha256 = read_digest(s3, expected.key)
    if (size, sha256) != (expected.size, expected.sha256):
        raise ArchiveMismatch(
            f"s3://{s3.bucket}/{expected.key}: expected {expected.size} bytes with SHA-256"
            f" {expected.sha256}, found {size} bytes with SHA-256 {sha256}"
        )


def mismatch_by_head(s3: S3Storage, expected: StoredObject) -> str | None:
    """Why the stored object does not match the manifest entry, or None when it does."""
    try:
        head = s3.client.head_object(Bucket=s3.bucket, Key=expected.key, ChecksumMode="ENABLED")
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return f"{expected.key}: missing"
        raise
    if head["ContentLength"] != expected.size:
        return f"{expected.key}: {head['ContentLength']} bytes, manifest says {expected.size}"
    if head.get("ChecksumSHA256") != sha256_base64(expected.sha256):
        return f"{expected.key}: SHA-256 differs from the manifest"
    return None

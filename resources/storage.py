"""Object storage for generated media, inbound media and archives (S3 or a compatible server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from resources import settings


class S3Storage(S3Resource):
    """`dagster_aws`'s S3 resource plus the bucket, with one cached client per process."""

    bucket: str

    _client: Any = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> S3Storage:
        return cls(
            bucket=settings.require("S3_BUCKET"),
            endpoint_url=settings.get("AWS_ENDPOINT_URL"),
            region_name=settings.get("AWS_REGION"),
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.get_client()
        return self._client

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (the local server starts empty)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def upload_file(self, path: Path, key: str, content_type: str) -> None:
        self.client.upload_file(
            str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}
        )

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
                return False
            raise
        return True

    def presigned_url(self, key: str, expires_in: int) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )

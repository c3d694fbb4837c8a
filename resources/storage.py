"""Object storage for generated media, inbound media and archives (S3 or a compatible server).

A resource of our own rather than `dagster_aws.s3.S3Resource`: importing `dagster_aws` loads
every one of its components (Athena, Secrets Manager, Dagster's test utilities), about 29 MB
in every process that stores a file, for the three settings used here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources import settings


class S3Storage(ConfigurableResource):
    """The bucket and where it is, with one cached client per process."""

    bucket: str
    # None: botocore's own (AWS_DEFAULT_REGION, the profile's).
    region_name: str | None = None
    endpoint_url: str | None = None
    # Attempts per call, the first included, in botocore's standard retry mode.
    max_attempts: int = 5

    _client: Any = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, source: settings.Source = settings.NOW) -> S3Storage:
        """The one way it is built, by the code location and by every process."""
        return cls(
            bucket=source.text("S3_BUCKET"),
            endpoint_url=source.text("AWS_ENDPOINT_URL"),
            region_name=source.text("AWS_REGION"),
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.session.Session().client(
                "s3",
                region_name=self.region_name,
                endpoint_url=self.endpoint_url,
                config=Config(retries={"max_attempts": self.max_attempts, "mode": "standard"}),
            )
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

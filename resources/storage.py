"""Object storage for generated media, inbound media and archives (S3 or a compatible server).

A resource of our own rather than `dagster_aws.s3.S3Resource`: importing `dagster_aws` loads
every one of its components (Athena, Secrets Manager, Dagster's test utilities), about 29 MB
in every process that stores a file, for the three settings used here.

Generated media go up through `put`, not botocore's `put_object`: a campaign uploads two or
more files a member, and `put_object` cost about 1.4 ms of CPU a file in the run process
(parameter validation, event hooks, endpoint rules, checksums, signing, and an
`Expect: 100-continue` round trip for a file body) where a PUT to a URL botocore presigned
costs about half. botocore still decides the URL and signs it, so every endpoint,
partition and credential it knows works the same; urllib3 sends the body.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import IO, Any

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources import settings
from resources.aws_retries import with_retries

# A presigned upload's URL stays valid over every retry of it.
UPLOAD_URL_SECONDS = 900
_UPLOAD_TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)


class S3Storage(ConfigurableResource):
    """The bucket and where it is, with one cached client per process."""

    bucket: str
    # None: botocore's own (AWS_DEFAULT_REGION, the profile's).
    region_name: str | None = None
    endpoint_url: str | None = None
    # Attempts per call, the first included, in botocore's standard retry mode.
    max_attempts: int = 5

    _client: Any = PrivateAttr(default=None)
    _uploads: urllib3.PoolManager | None = PrivateAttr(default=None)

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
            self._uploads = urllib3.PoolManager(maxsize=16, timeout=_UPLOAD_TIMEOUT, retries=False)
            self._client = boto3.session.Session().client(
                "s3",
                region_name=self.region_name,
                endpoint_url=self.endpoint_url,
                config=Config(
                    retries={"max_attempts": self.max_attempts, "mode": "standard"},
                    # Presigned URLs signed as every bucket accepts: S3 refuses the older
                    # Signature Version 2 for buckets made since June 2020.
                    signature_version="s3v4",
                ),
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

    def put(self, key: str, body: IO[bytes], size: int, content_type: str) -> None:
        """Store `size` bytes read from `body` (from its start, again on each retry) under
        `key` in one PUT, retried as botocore's standard mode retries."""
        url = self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
            ExpiresIn=UPLOAD_URL_SECONDS,
        )
        headers = {"Content-Type": content_type, "Content-Length": str(size)}

        def send() -> urllib3.BaseHTTPResponse:
            body.seek(0)
            return self._uploads.urlopen("PUT", url, body=body, headers=headers)

        with_retries(send, self.max_attempts, _error_response, "PutObject", url.split("?")[0])

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


def _error_response(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    """botocore's error shape, from S3's XML error (`<Error><Code>…`); by the HTTP status
    when the answer is not one (a proxy's error page)."""
    try:
        error = ElementTree.fromstring(response.data)
    except ElementTree.ParseError:
        error = None
    code = error.findtext("Code") if error is not None else None
    message = error.findtext("Message") if error is not None else None
    return {
        "Error": {
            "Code": code or str(response.status),
            "Message": message or response.reason or "",
        },
        "ResponseMetadata": {"HTTPStatusCode": response.status},
    }

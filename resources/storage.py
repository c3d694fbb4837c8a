"""Object storage for generated media, inbound media and archives (S3 or a compatible server).

A resource of our own rather than `dagster_aws.s3.S3Resource`: importing `dagster_aws` loads
every one of its components (Athena, Secrets Manager, Dagster's test utilities), about 29 MB
in every process that stores a file, for the three settings used here.

Generated media go up through `put`, not botocore's `put_object`: a campaign uploads two or
more files a member, and `put_object` cost about 1.4 ms of CPU a file in the run process
(parameter validation, event hooks, endpoint rules, checksums, signing, and an
`Expect: 100-continue` round trip for a file body) where a PUT to a presigned URL costs
a fraction of it (`resources.uploads` sends it).

Presigned URLs (those uploads, and the media links a campaign sends) are signed by
`UrlSigner`: botocore presigns one URL when the first is needed, which settles where the
bucket is (endpoint, partition, path or virtual-host style) and the region it signs for;
each key's URL is then that URL's base with the key, signed with the session's current
credentials as botocore's S3 query signer signs (`resources.sigv4`). The same URL
`generate_presigned_url` gives (`tests/test_storage.py` compares them), for a small part of
its CPU: `generate_presigned_url` resolves the endpoint rules and emits its events on every
call, and botocore's signer alone cost about 0.2 ms a URL (one upload each, and one link
each message a dispatch run queues).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
from botocore import auth as botocore_auth
from botocore.auth import _host_from_url
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources import settings, sigv4
from resources.aws_retries import with_retries
from resources.uploads import Answer, Uploads

# A presigned upload's URL stays valid over every retry of it.
UPLOAD_URL_SECONDS = 900
# The key botocore presigns once to show where the bucket's keys are.
_PROBE_KEY = "probe"


@dataclass(frozen=True)
class UrlSigner:
    """Presigned URLs of one bucket's keys, from the base of one botocore presigned."""

    base: str
    region: str
    credentials: Credentials

    @classmethod
    def of(cls, client: Any, credentials: Credentials, bucket: str) -> UrlSigner:
        probe = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}
        )
        url, _, query = probe.partition("?")
        # X-Amz-Credential: access key / date / region / service / aws4_request
        region = parse_qs(query)["X-Amz-Credential"][0].split("/")[2]
        return cls(url.removesuffix(_PROBE_KEY), region, credentials)

    @cached_property
    def _host_and_path(self) -> tuple[str, str]:
        return _host_from_url(self.base), urlsplit(self.base).path

    def url(self, method: str, key: str, expires_in: int, headers: dict[str, str]) -> str:
        """`method` on `key` for `expires_in` seconds; `headers` are signed too, and the
        request must send them as given. Signed as botocore's S3 query signer signs (its
        parameters in its order, the payload unsigned), at the time botocore reads."""
        credentials = self.credentials.get_frozen_credentials()
        amz_date = botocore_auth.get_current_datetime().strftime(sigv4.TIMESTAMP)
        scope = sigv4.scope(amz_date, self.region, "s3")
        host, path = self._host_and_path
        signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
        signed["host"] = host
        names = sorted(signed)
        params = {
            "X-Amz-Algorithm": sigv4.ALGORITHM,
            "X-Amz-Credential": f"{credentials.access_key}/{scope}",
            "X-Amz-Date": amz_date,
            "X-Amz-Expires": str(expires_in),
            "X-Amz-SignedHeaders": ";".join(names),
        }
        if credentials.token is not None:
            params["X-Amz-Security-Token"] = credentials.token
        query = [(quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params.items()]
        key_path = quote(key, safe="/~")
        canonical = "\n".join(
            [
                method,
                path + key_path,
                "&".join(f"{k}={v}" for k, v in sorted(query)),
                "".join(f"{name}:{signed[name]}\n" for name in names),
                ";".join(names),
                "UNSIGNED-PAYLOAD",
            ]
        )
        signature = sigv4.signature(credentials.secret_key, amz_date, scope, canonical)
        return (
            f"{self.base}{key_path}?{'&'.join(f'{k}={v}' for k, v in query)}"
            f"&X-Amz-Signature={signature}"
        )


class S3Storage(ConfigurableResource):
    """The bucket and where it is, with one cached client per process."""

    bucket: str
    # None: botocore's own (AWS_DEFAULT_REGION, the profile's).
    region_name: str | None = None
    endpoint_url: str | None = None
    # Attempts per call, the first included, in botocore's standard retry mode.
    max_attempts: int = 5

    _client: Any = PrivateAttr(default=None)
    _session: Any = PrivateAttr(default=None)
    _signer: UrlSigner | None = PrivateAttr(default=None)
    _uploads: Uploads | None = PrivateAttr(default=None)

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
            self._session = boto3.session.Session()
            self._client = self._session.client(
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
        signed = {"Content-Type": content_type}
        url = self.signer.url("PUT", key, UPLOAD_URL_SECONDS, signed)
        headers = {**signed, "Content-Length": str(size)}
        parts = urlsplit(url)
        target = f"{parts.path}?{parts.query}"

        def send() -> Answer:
            body.seek(0)
            return self._uploads.put(target, body, headers)

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
        return self.signer.url("GET", key, expires_in, {})

    @property
    def signer(self) -> UrlSigner:
        """Made on first use, with the connections uploads go on (to the origin of
        the signer's URLs): without credentials, botocore's error is the call's."""
        if self._signer is None:
            client = self.client
            signer = UrlSigner.of(client, self._session.get_credentials(), self.bucket)
            self._uploads = Uploads(signer.base)
            self._signer = signer
        return self._signer


def _error_response(response: Answer) -> dict[str, Any]:
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

"""Uploads through `S3Storage.put`: what S3 stores, its errors as botocore reports them, and
retries as botocore's standard mode makes them; against the local S3 server, and a server
of our own where S3 has to fail."""

import datetime
import io
import socket
import threading
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from pipelines.dev.local_aws import CREDENTIALS
from pipelines.dev.local_stack import free_port
from resources.storage import S3Storage
from tests.servers import serve

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 300


def test_put_stores_the_body_from_its_start_with_its_content_type(s3):
    body = io.BytesIO(JPEG)
    body.seek(100)  # wherever the caller left it
    s3.put("put/offer.jpg", body, len(JPEG), "image/jpeg")

    stored = s3.client.get_object(Bucket=s3.bucket, Key="put/offer.jpg")
    assert stored["Body"].read() == JPEG
    assert stored["ContentType"] == "image/jpeg"

    s3.put("put/offer.jpg", io.BytesIO(b"{}"), 2, "application/json")  # a re-run overwrites
    assert s3.client.get_object(Bucket=s3.bucket, Key="put/offer.jpg")["Body"].read() == b"{}"


def test_a_missing_bucket_is_boto3s_error(s3):
    missing = S3Storage(bucket="no-such-bucket", endpoint_url=s3.endpoint_url)
    with pytest.raises(ClientError) as error:
        missing.put("a.json", io.BytesIO(b"{}"), 2, "application/json")
    assert error.value.response["Error"]["Code"] == "NoSuchBucket"
    assert error.value.operation_name == "PutObject"


def test_presigned_urls_use_signature_version_4(s3):
    url = s3.presigned_url("put/offer.jpg", 60)
    assert parse_qs(urlsplit(url).query)["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]


@pytest.mark.parametrize(
    ("region", "endpoint_url"),
    [("us-east-1", "http://127.0.0.1:9"), ("eu-west-1", None), ("ap-southeast-2", None)],
)
def test_presigned_urls_are_the_ones_botocore_makes(monkeypatch, region, endpoint_url):
    """Path style on a local endpoint, virtual-host style on AWS's, other regions, temporary
    credentials, keys that need escaping: each URL is the string botocore gives."""
    for name, value in {**CREDENTIALS, "AWS_SESSION_TOKEN": "a-session-token"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 12, 3, 4, 5, 6)
    )
    storage = S3Storage(bucket="media-bucket", region_name=region, endpoint_url=endpoint_url)
    for key in ("campaigns/c/1/image.jpg", "campaigns/c/a b+c/ü~é?.json", "x//y/%41"):
        assert storage.presigned_url(key, 600) == storage.client.generate_presigned_url(
            "get_object", Params={"Bucket": "media-bucket", "Key": key}, ExpiresIn=600
        )
        assert storage.signer.url(
            "PUT", key, 900, {"Content-Type": "image/jpeg"}
        ) == storage.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": "media-bucket", "Key": key, "ContentType": "image/jpeg"},
            ExpiresIn=900,
        )


def failing_s3(failures: int, status: int, code: str | None) -> Starlette:
    """Answers its first `failures` uploads as S3 answers a failed one (`status`, an XML
    error with `code`; a proxy's HTML page without one), then stores as S3 would; keeps every
    body it was sent."""
    bodies = []

    async def put(request):
        bodies.append(await request.body())
        if len(bodies) <= failures:
            if code is None:
                return Response("<h1>Bad Gateway</h1>", status_code=status, media_type="text/html")
            error = f"<Error><Code>{code}</Code><Message>no</Message></Error>"
            return Response(error, status_code=status, media_type="application/xml")
        return Response(status_code=200, headers={"ETag": '"x"'})

    app = Starlette(routes=[Route("/{key:path}", put, methods=["PUT"])])
    app.state.bodies = bodies
    return app


@pytest.fixture
def credentials(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def _storage(url: str) -> S3Storage:
    return S3Storage(bucket="media", endpoint_url=url, region_name="us-east-1", max_attempts=3)


def test_throttling_and_server_errors_are_retried_with_the_whole_body(credentials):
    for status, code in ((503, "SlowDown"), (500, "InternalError")):
        recovering = failing_s3(failures=2, status=status, code=code)
        with serve(recovering) as url:
            _storage(url).put("a.jpg", io.BytesIO(JPEG), len(JPEG), "image/jpeg")
        assert recovering.state.bodies == [JPEG] * 3


def test_a_refusal_is_not_retried_and_keeps_its_code(credentials):
    refusing = failing_s3(failures=100, status=403, code="AccessDenied")
    with serve(refusing) as url, pytest.raises(ClientError) as error:
        _storage(url).put("a.jpg", io.BytesIO(JPEG), len(JPEG), "image/jpeg")
    assert error.value.response["Error"]["Code"] == "AccessDenied"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert len(refusing.state.bodies) == 1

    broken = failing_s3(failures=100, status=502, code=None)
    with serve(broken) as url, pytest.raises(ClientError) as error:
        _storage(url).put("a.jpg", io.BytesIO(JPEG), len(JPEG), "image/jpeg")
    assert error.value.response["Error"]["Code"] == "502"
    assert len(broken.state.bodies) == 3


def test_an_unreachable_endpoint_is_a_botocore_connection_error(credentials):
    storage = _storage(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BotoCoreError, match="Could not connect"):
        storage.put("a.jpg", io.BytesIO(JPEG), len(JPEG), "image/jpeg")


def test_a_connection_the_server_closed_while_idle_is_replaced_not_retried(credentials):
    """S3 closes idle keep-alive connections: the next upload goes on a new one, without
    spending one of its attempts on the dead one."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed, requests = threading.Event(), []

    def answer_once_per_connection():
        for _ in range(2):
            connection, _ = listener.accept()
            with connection, connection.makefile("rb") as stream:
                head = b"".join(iter(stream.readline, b"\r\n"))
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                requests.append(stream.read(length))
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            closed.set()  # no `Connection: close`: the client learns it from the socket

    server = threading.Thread(target=answer_once_per_connection, daemon=True)
    server.start()
    storage = S3Storage(
        bucket="media",
        endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
        region_name="us-east-1",
        max_attempts=1,
    )
    storage.put("a.jpg", io.BytesIO(JPEG), len(JPEG), "image/jpeg")
    assert closed.wait(30)
    storage.put("b.json", io.BytesIO(b"{}"), 2, "application/json")
    server.join(30)
    listener.close()
    assert requests == [JPEG, b"{}"]

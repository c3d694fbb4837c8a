"""The lean SQS client: signed as botocore signs, and failing as boto3 fails, against the
local SQS server."""

import json
from datetime import datetime

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from pipelines.dev.local_stack import free_port
from resources import sqs_client
from resources.queue import SQSResource
from resources.sqs_client import SQSClient
from tests.servers import serve

MOMENT = datetime(2026, 3, 1, 12, 30, 5)


@pytest.mark.parametrize("token", [None, "session-token"])
def test_requests_are_signed_exactly_as_botocore_signs_them(monkeypatch, token):
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    monkeypatch.setattr(sqs_client.time, "gmtime", lambda: MOMENT.timetuple())
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: MOMENT)
    body = json.dumps({"QueueUrl": "https://sqs.eu-west-1.amazonaws.com/1/q"}).encode()
    ours = SQSClient("https://sqs.eu-west-1.amazonaws.com", "eu-west-1", credentials)._sign(
        "ReceiveMessage", body
    )

    theirs = AWSRequest(
        method="POST",
        url="https://sqs.eu-west-1.amazonaws.com/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "AmazonSQS.ReceiveMessage",
            "x-amzn-query-mode": "true",
        },
    )
    botocore.auth.SigV4Auth(credentials, "sqs", "eu-west-1").add_auth(theirs)

    assert ours["authorization"] == theirs.headers["Authorization"]
    assert ours["x-amz-date"] == theirs.headers["X-Amz-Date"]
    assert ours.get("x-amz-security-token") == theirs.headers.get("X-Amz-Security-Token")


def test_answers_have_boto3s_shape(sqs):
    entries = [{"Id": str(i), "MessageBody": f"m{i}", "MessageGroupId": "g"} for i in range(3)]
    entries = [e | {"MessageDeduplicationId": e["Id"]} for e in entries]
    sent = sqs.client.send_message_batch(QueueUrl=sqs.url(), Entries=entries)
    assert sorted(s["Id"] for s in sent["Successful"]) == ["0", "1", "2"]
    received = sqs.client.receive_message(
        QueueUrl=sqs.url(), MaxNumberOfMessages=10, AttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert [m["Body"] for m in received] == ["m0", "m1", "m2"]
    assert received[0]["Attributes"]["ApproximateReceiveCount"] == "1"


def test_errors_carry_the_codes_boto3_reports(sqs):
    boto = boto3.session.Session().client(
        "sqs", region_name=sqs.region_name, endpoint_url=sqs.endpoint_url
    )
    missing = sqs.url().rsplit("/", 1)[0] + "/no-such-queue"
    with pytest.raises(ClientError) as theirs:
        boto.get_queue_attributes(QueueUrl=missing, AttributeNames=["All"])
    with pytest.raises(ClientError) as ours:
        sqs.client.get_queue_attributes(QueueUrl=missing, AttributeNames=["All"])
    assert ours.value.response["Error"]["Code"] == theirs.value.response["Error"]["Code"]
    assert ours.value.operation_name == "GetQueueAttributes"

    too_many = [{"Id": str(i), "MessageBody": "x"} for i in range(11)]
    with pytest.raises(ClientError, match="TooManyEntriesInBatchRequest"):
        sqs.client.send_message_batch(QueueUrl=sqs.url(), Entries=too_many)


def test_an_unreachable_endpoint_is_a_botocore_connection_error():
    client = SQSClient(
        f"http://127.0.0.1:{free_port()}", "us-east-1", Credentials("local", "local")
    )
    with pytest.raises(BotoCoreError, match="Could not connect"):
        client.get_queue_url(QueueName="q")


def test_calls_without_credentials_are_refused_before_anything_is_sent():
    client = SQSClient(f"http://127.0.0.1:{free_port()}", "us-east-1", None)
    with pytest.raises(BotoCoreError, match="Unable to locate credentials"):
        client.get_queue_url(QueueName="q")


def crashing_server(failures: int) -> Starlette:
    """Answers its first `failures` requests with a server error page, then as SQS would."""
    seen = []

    async def endpoint(request):
        seen.append(request.headers["x-amz-target"])
        if len(seen) <= failures:
            return HTMLResponse("<h1>Internal Server Error</h1>", status_code=500)
        return JSONResponse({"QueueUrl": "http://queue"})

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    app.state.seen = seen
    return app


def test_server_errors_are_retried_then_reported_by_their_status():
    credentials = Credentials("local", "local")
    recovering = crashing_server(failures=2)
    with serve(recovering) as url:
        answer = SQSClient(url, "us-east-1", credentials).get_queue_url(QueueName="q")
    assert answer == {"QueueUrl": "http://queue"}
    assert recovering.state.seen == ["AmazonSQS.GetQueueUrl"] * 3

    broken = crashing_server(failures=100)
    with serve(broken) as url, pytest.raises(ClientError) as error:
        SQSClient(url, "us-east-1", credentials).get_queue_url(QueueName="q")
    assert error.value.response["Error"]["Code"] == "500"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert len(broken.state.seen) == 3


def throttling_server(throttled: int, code: str = "RequestThrottled") -> Starlette:
    """Answers its first `throttled` requests as SQS answers a throttled one (HTTP 400 and an
    error code), then as SQS would."""
    seen = []

    async def endpoint(request):
        seen.append(request.headers["x-amz-target"])
        if len(seen) <= throttled:
            return JSONResponse(
                {"__type": f"com.amazonaws.sqs#{code}", "message": "Rate exceeded"},
                status_code=400,
                headers={"x-amzn-query-error": f"{code};Sender"},
            )
        return JSONResponse({"QueueUrl": "http://queue"})

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    app.state.seen = seen
    return app


def test_throttling_is_retried_and_a_refusal_is_not():
    credentials = Credentials("local", "local")
    throttled = throttling_server(throttled=2)
    with serve(throttled) as url:
        answer = SQSClient(url, "us-east-1", credentials).get_queue_url(QueueName="q")
    assert answer == {"QueueUrl": "http://queue"}
    assert len(throttled.state.seen) == 3

    refused = throttling_server(throttled=100, code="InvalidParameterValue")
    with serve(refused) as url, pytest.raises(ClientError) as error:
        SQSClient(url, "us-east-1", credentials).get_queue_url(QueueName="q")
    assert error.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert len(refused.state.seen) == 1


def _resolved(monkeypatch, **env: str) -> SQSClient:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no profile's region either
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return SQSResource.from_settings().client


def test_the_endpoint_and_region_are_botocores(monkeypatch):
    china = _resolved(monkeypatch, AWS_DEFAULT_REGION="cn-north-1")
    assert china.endpoint_url == "https://sqs.cn-north-1.amazonaws.com.cn"
    assert china._region == "cn-north-1"

    ours = _resolved(monkeypatch, AWS_REGION="eu-west-1", AWS_DEFAULT_REGION="us-west-2")
    assert (ours.endpoint_url, ours._region) == ("https://sqs.eu-west-1.amazonaws.com", "eu-west-1")

    fips = _resolved(monkeypatch, AWS_DEFAULT_REGION="us-gov-west-1", AWS_USE_FIPS_ENDPOINT="true")
    assert fips.endpoint_url.startswith("https://sqs.us-gov-west-1.")
    assert fips._region == "us-gov-west-1"

    service = _resolved(
        monkeypatch, AWS_DEFAULT_REGION="eu-central-1", AWS_ENDPOINT_URL_SQS="http://127.0.0.1:9"
    )
    assert (service.endpoint_url, service._region) == ("http://127.0.0.1:9", "eu-central-1")

    nothing = _resolved(monkeypatch)
    assert nothing._region == "us-east-1"

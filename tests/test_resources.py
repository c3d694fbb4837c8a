"""Each resource against its real server: Postgres, S3/SQS over their wire protocols, and
the Graph API fake on loopback."""

import json
import time

import httpx
import pytest
from langchain_core.messages import HumanMessage

from pipelines.dev.local_stack import EmbeddedPostgres
from resources.chat import ChatModelResource
from resources.graph_errors import ClientClosed, ErrorClass, GraphAPIError, classify
from resources.offline_chat import OFFLINE_LABEL
from resources.postgres import PostgresResource
from resources.whatsapp import WhatsAppClient, WhatsAppResource
from tests.fake_graph import Failure, FakeGraph
from tests.servers import serve


def test_postgres_resource_connects(postgres):
    postgres.ping()


def test_engine_survives_a_postgres_restart(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    try:
        resource = PostgresResource(database_url=server.url("postgres"))
        resource.ping()
        server.stop()
        with pytest.raises(Exception, match=r"connect|closed|refused|terminat"):
            resource.ping()
        server.start()
        resource.ping()
        resource.engine.dispose()
    finally:
        server.stop()


def test_s3_storage_uploads_checks_and_presigns(s3, tmp_path):
    path = tmp_path / "card.jpg"
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    assert not s3.exists("campaigns/c/a/image.jpg")
    s3.upload_file(path, "campaigns/c/a/image.jpg", "image/jpeg")
    assert s3.exists("campaigns/c/a/image.jpg")
    head = s3.client.head_object(Bucket=s3.bucket, Key="campaigns/c/a/image.jpg")
    assert head["ContentType"] == "image/jpeg"
    fetched = httpx.get(s3.presigned_url("campaigns/c/a/image.jpg", 60))
    assert fetched.status_code == 200
    assert fetched.content == path.read_bytes()


def test_sqs_fifo_queue_round_trip_with_a_dead_letter_queue(sqs):
    assert sqs.is_fifo
    attributes = sqs.client.get_queue_attributes(
        QueueUrl=sqs.url(), AttributeNames=["RedrivePolicy"]
    )
    assert json.loads(attributes["Attributes"]["RedrivePolicy"])["maxReceiveCount"] == 3
    entries = [
        {
            "Id": str(i),
            "MessageBody": json.dumps({"n": i}),
            "MessageGroupId": f"g{i % 3}",
            "MessageDeduplicationId": f"d{i}",
        }
        for i in range(10)
    ]
    assert len(sqs.send_batch(entries)["Successful"]) == 10
    assert sqs.depth().visible == 10
    received = []
    deadline = time.monotonic() + 60
    while len(received) < 10 and time.monotonic() < deadline:
        for message in sqs.receive(wait_seconds=1):
            received.append(json.loads(message.body)["n"])
            sqs.delete([message])
    assert sorted(received) == list(range(10))
    assert sqs.depth().visible == 0
    sqs.ensure_queues()  # idempotent


def test_sqs_standard_queue_works_too(sqs):
    standard = sqs.model_copy(
        update={
            "queue_name": sqs.queue_name.removesuffix(".fifo"),
            "dlq_name": sqs.dlq_name.removesuffix(".fifo"),
        }
    )
    standard.ensure_queues()
    assert not standard.is_fifo
    standard.send_batch([{"Id": "1", "MessageBody": "{}"}])
    assert standard.depth().visible == 1


@pytest.fixture
def graph():
    fake = FakeGraph()
    with serve(fake.app()) as url:
        yield (
            fake,
            WhatsAppResource(access_token=fake.access_token, phone_number_id="1234", base_url=url),
        )


def test_whatsapp_client_sends_and_returns_the_wamid(graph):
    fake, resource = graph
    sent = resource.client.send("+12025550100", {"type": "text", "text": {"body": "Hello"}})
    assert sent.wamid.startswith("wamid.")
    assert sent.recipient_wa_id == "12025550100"
    assert fake.requests[0]["messaging_product"] == "whatsapp"
    assert fake.requests[0]["to"] == "+12025550100"


def test_whatsapp_errors_keep_the_graph_code_and_title(graph):
    fake, resource = graph
    fake.fail_next(
        Failure(code=131056, title="(Business Account, Consumer Account) pair rate limit hit")
    )
    with pytest.raises(GraphAPIError) as raised:
        resource.client.send("+12025550100", {"type": "text", "text": {"body": "Hello"}})
    assert raised.value.code == 131056
    assert raised.value.http_status == 400
    assert "pair rate limit" in raised.value.title


def test_whatsapp_client_refused_without_the_right_token(graph):
    _, resource = graph
    wrong = resource.model_copy(update={"access_token": "other"})
    with pytest.raises(GraphAPIError) as raised:
        wrong.client.send("+12025550100", {"type": "text", "text": {"body": "Hello"}})
    assert raised.value.code == 190


def test_whatsapp_dev_mode_sends_nothing(graph):
    fake, resource = graph
    dev = resource.model_copy(update={"access_token": None})
    template = {"type": "template", "template": {"name": "welcome"}}
    ours = dev.client.send("+12025550100", {**template, "biz_opaque_callback_data": "42"})
    assert ours.wamid == "dev_12025550100_welcome_42"
    # Without our id (a reply), a random one: two sends never share a wamid.
    first, second = (dev.client.send("+12025550100", template) for _ in range(2))
    assert first.wamid.startswith("dev_12025550100_welcome_") and first.wamid != second.wamid
    assert fake.requests == []


def test_chat_model_without_a_key_is_the_labelled_offline_responder():
    resource = ChatModelResource(google_api_key=None)
    assert resource.offline
    reply = resource.chat_model().invoke([HumanMessage(content="Where is my order?")])
    assert reply.content.startswith(OFFLINE_LABEL)
    assert "Where is my order?" in reply.content


def test_chat_model_with_a_key_is_gemini():
    model = ChatModelResource(google_api_key="test-key", model="gemini-2.5-flash").chat_model()
    assert type(model).__name__ == "ChatGoogleGenerativeAI"


def test_a_send_caught_by_the_clients_close_ends_as_not_sent_instead_of_waiting_for_ever():
    """A process shutting down closes its client while a thread is still sending (the
    agent's deliveries run in threads): that send ends, as not sent, so it may be retried."""
    client = WhatsAppClient(None, "1234", "http://127.0.0.1:9", "v21.0", 5, 4)
    loop = client._running_loop()  # the sending thread has the loop; then the close stops it
    loop.call_soon_threadsafe(loop.stop)
    client._thread.join(timeout=60)
    with pytest.raises(ClientClosed) as closed:
        client.send("+16505551234", {"type": "text", "text": {"body": "hi"}})
    assert classify(closed.value).kind is ErrorClass.RETRYABLE

"""The agent answers every message a customer can send: media through a model that sees it,
or an offline reply that says what arrived; reactions and receipts alone get nothing."""

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_google_genai.chat_models import _convert_to_parts
from pydantic import Field

from tests import payloads as p
from tests.webhook_support import (
    add_organisation,
    fake_graph,
    inbox_drained,
    post,
    rows,
    scalar,
    wait_until,
    webhook_client,
)
from webhook_app.agent import UNSUPPORTED_REPLY, received_reply

VOICE = b"OggS\x00\x02voice-note-bytes"


class Recording(FakeListChatModel):
    """A stand-in for Gemini: fake replies, and the prompts it was given."""

    prompts: list[list[BaseMessage]] = Field(default_factory=list)

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.prompts.append(list(messages))
        return super()._call(messages, *args, **kwargs)


@pytest.fixture
def zero_buffer(monkeypatch):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")


def _sent_texts(graph) -> list[str]:
    return [r["text"]["body"] for r in graph.requests if r.get("type") == "text"]


def _unhandled(engine) -> int:
    return scalar(
        engine, "SELECT count(*) FROM messages WHERE direction = 'inbound' AND handled_at IS NULL"
    )


def test_a_voice_note_reaches_a_model_with_a_key_as_audio_from_our_bucket(
    engine, zero_buffer, s3, monkeypatch
):
    monkeypatch.setenv("S3_BUCKET", s3.bucket)
    add_organisation(engine)
    model = Recording(responses=["Your parcel left this morning."])
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        graph.add_media("MEDIA_VOICE_1", VOICE, "audio/ogg")
        post(client, p.inbound(p.voice_note("MEDIA_VOICE_1")))
        wait_until(lambda: _sent_texts(graph))
    assert _sent_texts(graph) == ["Your parcel left this morning."]
    [prompt] = model.prompts
    [said] = [m for m in prompt if m.type == "human"]
    text, audio = said.content
    assert text == {"type": "text", "text": "[voice note]"}
    assert audio["type"] == "audio" and audio["mime_type"] == "audio/ogg"
    # Gemini's LangChain integration turns the block into inline audio of our copy's bytes.
    [_, part] = _convert_to_parts(said.content)
    assert (part.inline_data.mime_type, part.inline_data.data) == ("audio/ogg", VOICE)


def test_a_voice_note_without_a_model_key_gets_a_reply_asking_for_text(engine, zero_buffer):
    add_organisation(engine)
    with fake_graph() as (graph, url), webhook_client(url) as client:
        post(client, p.inbound(p.voice_note()))
        wait_until(lambda: _sent_texts(graph))
        wait_until(lambda: _unhandled(engine) == 0)
    assert _sent_texts(graph) == [received_reply(["voice note"])]
    assert "voice note" in _sent_texts(graph)[0] and "type" in _sent_texts(graph)[0]


def test_offline_every_kind_of_media_is_named_in_the_reply(engine, zero_buffer):
    add_organisation(engine)
    photo = p.message("image", {"mime_type": "image/jpeg", "sha256": "a", "id": "MEDIA_IMG_9"})
    video = p.message("video", {"mime_type": "video/mp4", "sha256": "b", "id": "MEDIA_VID_9"})
    with fake_graph() as (graph, url), webhook_client(url) as client:
        post(client, p.inbound(photo, video))
        wait_until(lambda: _sent_texts(graph))
    [reply] = _sent_texts(graph)
    assert reply == received_reply(["photo", "video"])
    assert "photo and video" in reply


def test_a_photo_without_caption_reaches_the_model_as_an_image(
    engine, zero_buffer, s3, monkeypatch
):
    monkeypatch.setenv("S3_BUCKET", s3.bucket)
    add_organisation(engine)
    model = Recording(responses=["That is our blue model."])
    photo = p.message("image", {"mime_type": "image/jpeg", "sha256": "a", "id": "MEDIA_IMG_1"})
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        graph.add_media("MEDIA_IMG_1", b"\xff\xd8\xff-jpeg", "image/jpeg")
        post(client, p.inbound(photo))
        wait_until(lambda: _sent_texts(graph))
    [said] = [m for m in model.prompts[0] if m.type == "human"]
    assert said.content[0]["text"] == "[photo]"
    assert said.content[1]["type"] == "image" and said.content[1]["mime_type"] == "image/jpeg"


def test_unsupported_order_location_and_contacts_get_sensible_replies(engine, zero_buffer):
    add_organisation(engine)
    model = Recording(responses=["Thanks for your order!", "We are nearby."])
    unsupported = p.message(
        "unsupported",
        None,
        errors=[{"code": 131051, "title": "Message type unknown", "message": "unknown"}],
    )
    order = p.message(
        "order",
        {
            "catalog_id": "cat-1",
            "text": "by Friday please",
            "product_items": [
                {"product_retailer_id": "SKU-1", "quantity": 2, "item_price": 5, "currency": "EUR"}
            ],
        },
    )
    location = p.message("location", {"latitude": 38.9, "longitude": -77.03})
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(unsupported))
        wait_until(lambda: len(_sent_texts(graph)) == 1)
        post(client, p.inbound(order))
        wait_until(lambda: len(_sent_texts(graph)) == 2)
        post(client, p.inbound(location))
        wait_until(lambda: len(_sent_texts(graph)) == 3)
    assert _sent_texts(graph) == [UNSUPPORTED_REPLY, "Thanks for your order!", "We are nearby."]
    said = [m.content for m in model.prompts[0] if m.type == "human"]
    assert said[-1] == "[order] 2 x SKU-1: by Friday please"
    assert [m.content for m in model.prompts[1] if m.type == "human"][-1].startswith("[location]")


def test_reactions_and_receipts_alone_get_no_reply(engine, zero_buffer):
    add_organisation(engine)
    model = Recording(responses=["Hello!"])
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(p.text("hi")))
        # The reply's wamid is stored after Graph API answers: wait for the row, not the request.
        [reply] = wait_until(
            lambda: rows(
                engine,
                "SELECT provider_message_id FROM messages"
                " WHERE sender_type = 'ai' AND provider_message_id IS NOT NULL",
            )
        )
        reaction = p.message("reaction", {"message_id": reply.provider_message_id, "emoji": "👍"})
        post(client, p.inbound(reaction))
        post(client, p.statuses(p.status(reply.provider_message_id, "read")))
        wait_until(lambda: inbox_drained(engine) and _unhandled(engine) == 0)
        wait_until(
            lambda: scalar(engine, "SELECT count(*) FROM messages WHERE status = 'read'") == 1
        )
    assert _sent_texts(graph) == ["Hello!"]
    assert len(model.prompts) == 1

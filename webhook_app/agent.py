"""The conversation agent: one LangGraph `StateGraph` run answers one buffered turn.

load → triage → think → deliver. Memory is the messages table, not a LangGraph
checkpointer: every inbound, AI, operator and campaign message is already stored there
(the archive, the operator API and receipts need them anyway), so the history the model sees
is read from it each turn. Operator messages are therefore in the agent's memory the moment
they are stored, with no second copy to keep in sync, and a restart loses nothing. A turn
is marked handled in the transaction that stores its reply as an outbox row; the reply is
sent after that commit (`webhook_app.outbound`), so a crash before it leaves the turn to be
answered again, and one after it leaves the reply to be sent once, by the outbox loop.

Every turn gets an answer. Photos, stickers and voice notes reach a model that sees media
(Gemini) as LangChain content blocks, read from our bucket's copy of the inbound media;
video and documents reach it described. The offline responder sees no media, so a turn
with any then gets a reply saying what arrived and asking for text. Reactions, receipts
and system notices are stored handled (`webhook_app.inbound`) and never start a turn.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from dataclasses import dataclass
from typing import Any, TypedDict

import sqlalchemy as sa
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    trim_messages,
)
from langchain_core.messages.utils import count_tokens_approximately
from langgraph.graph import END, START, StateGraph

from resources import consent, conversation_messages, conversations, message_buffer, settings
from resources.offline_chat import OfflineResponder
from resources.storage import S3Storage
from resources.whatsapp import WhatsAppClient
from webhook_app import outbound

log = logging.getLogger(__name__)

HANDOFF_MARKER = "[HANDOFF]"
HANDOFF_REPLY = "I'm passing you to a member of our team, who will reply here shortly."
FALLBACK_REPLY = (
    "Sorry, I can't answer right now. Please bear with us: we will get back to you shortly."
)
OPT_OUT_REPLY = (
    "You are unsubscribed and will get no more campaign messages. Reply START to subscribe again."
)
OPT_IN_REPLY = "You are subscribed again. Reply STOP to unsubscribe."
UNSUPPORTED_REPLY = (
    "Sorry, this kind of message can't be shown here. Could you send it as text, a photo or"
    " a voice note?"
)
HISTORY_ROWS = 100
# Kinds the customer typed or tapped: the rest are "received" things the reply may name.
TYPED_KINDS = ("text", "button", "interactive")
# Media the model is given itself (Gemini reads images and audio inline); other media is
# described in words. Larger files are described too: an inline request is capped (20 MB).
MODEL_MEDIA = {"image": "image", "sticker": "image", "audio": "audio"}
MODEL_MEDIA_MAX_BYTES = 8 * 1024 * 1024


def _words(value: str) -> frozenset[str]:
    """A comma-separated list of words, compared in lower case."""
    return frozenset(w.strip().lower() for w in value.split(",") if w.strip())


@dataclass(frozen=True)
class AgentConfig:
    """Read by `settings.load(AgentConfig)` when the webhook worker starts."""

    system_prompt: str = settings.setting("AGENT_SYSTEM_PROMPT")
    model_timeout_seconds: float = settings.setting("AGENT_MODEL_TIMEOUT_SECONDS")
    history_max_tokens: int = settings.setting("AGENT_HISTORY_MAX_TOKENS")
    handoff_words: frozenset[str] = settings.setting("AGENT_HANDOFF_WORDS", _words)
    opt_out_words: frozenset[str] = settings.setting("OPT_OUT_WORDS", _words)
    opt_in_words: frozenset[str] = settings.setting("OPT_IN_WORDS", _words)


class Turn(TypedDict, total=False):
    conversation_id: int
    message_ids: list[int]
    texts: list[str]
    text_ids: list[int]
    received: list[str]
    only_unsupported: bool
    history: list[BaseMessage]
    silent: bool
    opt: bool | None
    opt_message_id: int | None
    handoff: bool
    reply: str | None
    fallback: bool
    sent: list[int]


class Agent:
    def __init__(
        self,
        engine: sa.Engine,
        client: WhatsAppClient,
        model: BaseChatModel,
        config: AgentConfig,
        s3: S3Storage | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.model = model
        self.config = config
        self.s3 = s3
        # Any real model (Gemini, or a test's stand-in for it) is given the media.
        self.sees_media = not isinstance(model, OfflineResponder)
        graph = StateGraph(Turn)
        graph.add_node("load", self._load)
        graph.add_node("triage", self._triage)
        graph.add_node("think", self._think)
        graph.add_node("deliver", self._deliver)
        graph.add_edge(START, "load")
        graph.add_edge("load", "triage")
        graph.add_conditional_edges("triage", self._needs_model, ["think", "deliver"])
        graph.add_edge("think", "deliver")
        graph.add_edge("deliver", END)
        self.graph = graph.compile()

    async def answer(self, conversation_id: int) -> Turn:
        return await self.graph.ainvoke({"conversation_id": conversation_id})

    async def _load(self, turn: Turn) -> Turn:
        return await asyncio.to_thread(self._load_sync, turn["conversation_id"])

    def _load_sync(self, conversation_id: int) -> Turn:
        with self.engine.connect() as conn:
            conversation = conversations.load(conn, conversation_id)
            rows = conversation_messages.recent(conn, conversation_id, HISTORY_ROWS)
        pending = [r for r in rows if r.direction == "inbound" and r.handled_at is None]
        pending_ids = {r.id for r in pending}
        return {
            "message_ids": [r.id for r in pending],
            "texts": [r.body for r in pending if r.body],
            "text_ids": [r.id for r in pending if r.body],
            "received": [
                describe(r.message_type, r.media)
                for r in pending
                if r.message_type not in TYPED_KINDS
            ],
            "only_unsupported": bool(pending)
            and all(r.message_type == "unsupported" for r in pending),
            "history": [self._chat_message(r, r.id in pending_ids) for r in rows],
            "silent": conversation.human_takeover,
        }

    def _chat_message(self, row: sa.Row, pending: bool) -> BaseMessage:
        """The row as the model reads it; this turn's photos and voice notes as content
        blocks when the model sees media (earlier turns' media only by their description,
        so a long conversation does not resend it)."""
        message = _as_chat_message(row)
        if not (pending and self.sees_media and row.message_type in MODEL_MEDIA):
            return message
        data = self._media_bytes(row)
        if data is None:
            return message
        block = {
            "type": MODEL_MEDIA[row.message_type],
            "base64": base64.b64encode(data).decode("ascii"),
        }
        mime_type = (row.media.get("mime_type") or "").split(";")[0].strip()
        if mime_type:
            block["mime_type"] = mime_type
        return HumanMessage(content=[{"type": "text", "text": message.text}, block])

    def _media_bytes(self, row: sa.Row) -> bytes | None:
        """Our copy of the message's media, or None (not copied, too large, unreadable)."""
        media = row.media or {}
        if self.s3 is None or not media.get("s3_key"):
            return None
        try:
            head = self.s3.client.head_object(Bucket=media["s3_bucket"], Key=media["s3_key"])
            if head["ContentLength"] > MODEL_MEDIA_MAX_BYTES:
                return None
            got = self.s3.client.get_object(Bucket=media["s3_bucket"], Key=media["s3_key"])
            return got["Body"].read()
        except Exception as error:
            log.warning("media of message %s not read: %s", row.id, type(error).__name__)
            return None

    async def _triage(self, turn: Turn) -> Turn:
        """Opt-out/opt-in words and requests for a human are answered without the model.

        A turn whose last message is an opt-out word gets the confirmation only: whatever
        else it held, the customer's last word was to stop."""
        said = [t.strip().lower() for t in turn["texts"]]
        opt, opt_message_id = None, None
        ids = turn.get("text_ids") or [None] * len(said)
        for text, message_id in zip(said, ids, strict=True):
            if text in self.config.opt_out_words:
                opt, opt_message_id = True, message_id
            elif text in self.config.opt_in_words:
                opt, opt_message_id = False, message_id
        if said and said[-1] in self.config.opt_out_words:
            return {
                "opt": True,
                "opt_message_id": opt_message_id,
                "handoff": False,
                "reply": None,
                "texts": [],
                "received": [],
            }
        rest = [
            t
            for t in said
            if t not in self.config.opt_out_words and t not in self.config.opt_in_words
        ]
        asked_for_human = any(
            word in self.config.handoff_words for text in rest for word in re.findall(r"\w+", text)
        )
        opted = {"opt": opt, "opt_message_id": opt_message_id}
        if asked_for_human and not turn["silent"]:
            return {**opted, "handoff": True, "reply": HANDOFF_REPLY, "texts": rest}
        return {**opted, "handoff": False, "reply": self._reply_without_model(turn), "texts": rest}

    def _reply_without_model(self, turn: Turn) -> str | None:
        """A turn of only messages WhatsApp could not show us, or one with media when the
        model sees none, is answered by the agent itself."""
        if turn["only_unsupported"]:
            return UNSUPPORTED_REPLY
        if turn["received"] and not self.sees_media:
            return received_reply(turn["received"])
        return None

    def _needs_model(self, turn: Turn) -> str:
        if turn["silent"] or turn["handoff"] or turn.get("reply"):
            return "deliver"
        return "think" if turn["texts"] or turn["received"] else "deliver"

    async def _think(self, turn: Turn) -> Turn:
        history = trim_messages(
            turn["history"],
            max_tokens=self.config.history_max_tokens,
            token_counter=count_tokens_approximately,
            strategy="last",
            start_on="human",
        )
        prompt = [SystemMessage(self.config.system_prompt), *history]
        try:
            async with asyncio.timeout(self.config.model_timeout_seconds):
                answer = await self.model.ainvoke(prompt)
        except Exception as error:
            log.warning(
                "chat model failed for conversation %s: %s",
                turn["conversation_id"],
                type(error).__name__,
            )
            return {"reply": FALLBACK_REPLY, "fallback": True}
        text = answer.text.strip() if isinstance(answer.text, str) else str(answer.content)
        if HANDOFF_MARKER in text or not text:
            return {"reply": HANDOFF_REPLY, "handoff": True}
        return {"reply": text, "fallback": False}

    async def _deliver(self, turn: Turn) -> Turn:
        return await asyncio.to_thread(self._deliver_sync, turn)

    def _deliver_sync(self, turn: Turn) -> Turn:
        """Decide and store under the conversation's row lock (a takeover that lands while
        the model was thinking is seen here, and the agent then stays silent), then send
        after the commit: the replies are outbox rows first, so a crash at any point
        neither loses one nor sends one twice."""
        replies: list[int] = []
        with self.engine.begin() as conn:
            conversation = conversations.load(conn, turn["conversation_id"], lock=True)
            if turn.get("opt") is not None and consent.record(
                conn,
                consent.Change(
                    conversation.contact_id,
                    "campaigns",
                    turn["opt"],
                    "keyword",
                    message_id=turn.get("opt_message_id"),
                ),
            ):
                reply = OPT_OUT_REPLY if turn["opt"] else OPT_IN_REPLY
                replies.append(outbound.queue(conn, conversation, outbound.text(reply), "system"))
            if turn.get("reply") and not conversation.human_takeover:
                message = outbound.text(turn["reply"])
                replies.append(outbound.queue(conn, conversation, message, "ai"))
                if turn.get("handoff"):
                    conversations.flag(conn, conversation.id)
            conversation_messages.mark_handled(conn, turn["message_ids"])
            message_buffer.release(conn, conversation.id)
        deliveries = [outbound.deliver(self.engine, self.client, r) for r in replies]
        return {"sent": [d.message_id for d in deliveries if d.outcome == "sent"]}


def received_reply(received: list[str]) -> str:
    """The offline answer to a turn with media: what arrived (`describe()`'s words), and a
    request for text."""
    names = list(dict.fromkeys(received))
    said = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (
        f"Thanks, we received your {said}. I can only read text messages here at the moment:"
        " could you type what you need? A member of our team can also follow up."
    )


def describe(kind: str, media: dict[str, Any] | None = None) -> str:
    """A received message's kind in words (what the customer would call it)."""
    if kind == "audio":
        return "voice note" if (media or {}).get("voice") else "audio message"
    return {
        "image": "photo",
        "sticker": "sticker",
        "video": "video",
        "document": "document",
        "location": "location",
        "contacts": "shared contact",
        "order": "order",
        "unsupported": "message",
    }.get(kind, f"{kind} message")


def _as_chat_message(row: sa.Row) -> BaseMessage:
    if row.direction == "inbound":
        return HumanMessage(_inbound_text(row))
    text = row.body or f"[{row.message_type} message]"
    if row.sender_type == "operator":
        return AIMessage(f"(a member of our team wrote) {text}")
    return AIMessage(text)


def _inbound_text(row: sa.Row) -> str:
    """What the customer sent, in words: typed text as it is, anything else named first
    (`[voice note]`, `[photo] caption`), so the model knows what it is looking at."""
    if row.message_type in TYPED_KINDS:
        return row.body or f"[{row.message_type} message]"
    if row.message_type == "unsupported":
        return "[a message WhatsApp could not show us]"
    if row.message_type in ("location", "contacts", "order") and row.body:
        return row.body
    name = f"[{describe(row.message_type, row.media)}]"
    return f"{name} {row.body}" if row.body else name

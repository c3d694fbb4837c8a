"""The offline responder: the chat model when no Gemini key is configured, so the whole
stack runs without internet or a paid account. LangChain is imported with it, by the
processes that run the agent only."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

OFFLINE_LABEL = "[offline assistant]"


class OfflineResponder(BaseChatModel):
    """Answers every turn with a fixed, clearly labelled acknowledgement of the last message."""

    @property
    def _llm_type(self) -> str:
        return "offline-responder"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **_: Any,
    ) -> ChatResult:
        last = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        said = f' You wrote: "{last.content}".' if last is not None else ""
        text = (
            f"{OFFLINE_LABEL} Thanks for your message.{said} "
            "No AI model is configured, so a team member will follow up."
        )
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

"""The chat model behind the conversation agent: Gemini when a key is configured, else an
offline responder, so the whole stack runs without internet or a paid account."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from resources import settings

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


class ChatModelResource(ConfigurableResource):
    google_api_key: str | None = None
    model: str = settings.BY_NAME["CHAT_MODEL"].default
    temperature: float = 0.3

    @classmethod
    def from_env(cls) -> ChatModelResource:
        return cls(google_api_key=settings.get("GOOGLE_API_KEY"), model=settings.get("CHAT_MODEL"))

    @property
    def offline(self) -> bool:
        return not self.google_api_key

    def chat_model(self) -> BaseChatModel:
        if self.offline:
            return OfflineResponder()
        from langchain_google_genai import ChatGoogleGenerativeAI

        return ChatGoogleGenerativeAI(
            model=self.model, google_api_key=self.google_api_key, temperature=self.temperature
        )

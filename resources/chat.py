"""The chat model behind the conversation agent: Gemini when a key is configured, else an
offline responder (`resources.offline_chat`).

The resource is part of the Dagster code location, which must not pay for LangChain (about
30 MB) in every run: the model's libraries are imported when a model is built, by the
processes that run the agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ConfigurableResource

from resources import settings

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


class ChatModelResource(ConfigurableResource):
    google_api_key: str | None = None
    model: str = settings.BY_NAME["CHAT_MODEL"].default
    temperature: float = 0.3

    @classmethod
    def from_settings(cls, source: settings.Source = settings.NOW) -> ChatModelResource:
        """The one way it is built, by the code location and by every process."""
        return cls(google_api_key=source.text("GOOGLE_API_KEY"), model=source.text("CHAT_MODEL"))

    @property
    def offline(self) -> bool:
        return not self.google_api_key

    def chat_model(self) -> BaseChatModel:
        if self.offline:
            from resources.offline_chat import OfflineResponder

            return OfflineResponder()
        from langchain_google_genai import ChatGoogleGenerativeAI

        return ChatGoogleGenerativeAI(
            model=self.model, google_api_key=self.google_api_key, temperature=self.temperature
        )

"""WhatsApp Cloud API client (Graph API over urllib3), shared by the sender worker and the webhook app.

Without an access token the client is in dev mode (seed 2): nothing leaves the machine and
the returned message ids look like `dev_{phone}_{template}`, so the whole flow runs offline.

urllib3 rather than httpx: a send is the sender worker's main cost per message, and urllib3's
pooled request costs about a third of httpx's CPU. It never retries or follows redirects
here: a transport error reaches the caller as it happened (see `pipelines.sender.errors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import urllib3
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources import settings


@dataclass(frozen=True)
class SentMessage:
    wamid: str
    recipient_wa_id: str | None = None


class GraphAPIError(Exception):
    """An error answer of the Graph API, kept whole so callers can classify it by `code`."""

    def __init__(
        self,
        http_status: int,
        code: int | None,
        title: str,
        subcode: int | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(f"Graph API error {code} (HTTP {http_status}): {title}")
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.title = title
        self.details = details

    @classmethod
    def from_response(cls, response: urllib3.BaseHTTPResponse) -> GraphAPIError:
        try:
            error = json.loads(response.data).get("error", {})
        except (ValueError, AttributeError):
            error = {}
        return cls(
            http_status=response.status,
            code=error.get("code"),
            subcode=error.get("error_subcode"),
            title=error.get("error_user_title") or error.get("message") or response.reason or "",
            details=(error.get("error_data") or {}).get("details"),
        )


class WhatsAppClient:
    """One pooled HTTP connection set to the Graph API; thread-safe, reuse it."""

    def __init__(
        self,
        access_token: str | None,
        phone_number_id: str,
        base_url: str,
        api_version: str,
        timeout_seconds: float,
        max_connections: int,
    ) -> None:
        self.dev_mode = not access_token
        self.phone_number_id = phone_number_id
        self._auth = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        self._json = {**self._auth, "Content-Type": "application/json"}
        pool = {
            "maxsize": max_connections,
            "timeout": urllib3.Timeout(connect=5.0, read=timeout_seconds),
            "retries": False,
        }
        # The Graph host's own pool, addressed by path (no URL parsing per send); media
        # downloads go wherever their URL points.
        self._graph = urllib3.connection_from_url(base_url, **pool)
        self._prefix = f"{(urllib3.util.parse_url(base_url).path or '').rstrip('/')}/{api_version}"
        self._http = urllib3.PoolManager(**pool)

    def send(
        self,
        to: str,
        message: dict[str, Any],
        phone_number_id: str | None = None,
        *,
        recipient: str | None = None,
    ) -> SentMessage:
        """Send one message; `message` holds `type` and its object (`text`, `template`, …).

        A customer known only by WhatsApp's business-scoped user id is addressed with
        `recipient` (and an empty `to`).
        """
        if self.dev_mode:
            label = message.get("template", {}).get("name") or message["type"]
            return SentMessage(wamid=f"dev_{(to or recipient or '').lstrip('+')}_{label}")
        address = {"to": to} if to else {"recipient": recipient}
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            **address,
            **message,
        }
        response = self._graph.urlopen(
            "POST",
            f"{self._prefix}/{phone_number_id or self.phone_number_id}/messages",
            body=json.dumps(body).encode(),
            headers=self._json,
            redirect=False,
        )
        if response.status >= 400:
            raise GraphAPIError.from_response(response)
        data = json.loads(response.data)
        contacts = data.get("contacts") or [{}]
        return SentMessage(
            wamid=data["messages"][0]["id"], recipient_wa_id=contacts[0].get("wa_id")
        )

    def media_url(self, media_id: str) -> dict[str, Any]:
        """Metadata of an inbound media id: a short-lived `url`, `mime_type`, `file_size`."""
        response = self._graph.urlopen(
            "GET", f"{self._prefix}/{media_id}", headers=self._auth, redirect=False
        )
        if response.status >= 400:
            raise GraphAPIError.from_response(response)
        return json.loads(response.data)

    def download(self, url: str, max_bytes: int) -> bytes:
        """The content behind a media `url` (it needs the same bearer token), up to `max_bytes`."""
        chunks, size = [], 0
        # Read to the end, the connection goes back to the pool; left early, it is closed.
        with self._http.urlopen(
            "GET", url, headers=self._auth, redirect=False, preload_content=False
        ) as response:
            if response.status >= 400:
                raise GraphAPIError.from_response(response)
            for chunk in response.stream(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise GraphAPIError(413, None, f"media larger than {max_bytes} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._graph.close()
        self._http.clear()


class WhatsAppResource(ConfigurableResource):
    access_token: str | None = None
    phone_number_id: str = settings.BY_NAME["WHATSAPP_PHONE_NUMBER_ID"].default
    base_url: str = settings.BY_NAME["WHATSAPP_API_BASE_URL"].default
    api_version: str = settings.BY_NAME["WHATSAPP_API_VERSION"].default
    timeout_seconds: float = 10.0
    max_connections: int = 64

    _client: WhatsAppClient | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> WhatsAppResource:
        return cls(
            access_token=settings.get("WHATSAPP_ACCESS_TOKEN"),
            phone_number_id=settings.get("WHATSAPP_PHONE_NUMBER_ID"),
            base_url=settings.get("WHATSAPP_API_BASE_URL"),
            api_version=settings.get("WHATSAPP_API_VERSION"),
        )

    @property
    def client(self) -> WhatsAppClient:
        if self._client is None:
            self._client = WhatsAppClient(
                self.access_token,
                self.phone_number_id,
                self.base_url,
                self.api_version,
                self.timeout_seconds,
                self.max_connections,
            )
        return self._client

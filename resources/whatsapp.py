"""WhatsApp Cloud API client (Graph API over aiohttp), shared by the sender worker and the webhook app.

Without an access token the client is in dev mode (seed 2): nothing leaves the machine and
the returned message ids look like `dev_{phone}_{template}_{message id}` (unique per
message, as real wamids are), so the whole flow runs offline.

The requests run on the client's own event loop, in a thread of its own, and callers stay
synchronous. A batch of sends is one hand-off to that thread, and its answers are awaited
together. Sends are the sender worker's main cost per message: a thread per request paid
for a wake-up and a lock hand-over on each, twice the CPU of the loop. The client never
retries or follows redirects: a transport error reaches the caller as it happened (see
`resources.graph_errors`, which also holds the errors it raises).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources import settings
from resources.graph_errors import ClientClosed, GraphAPIError

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")


@dataclass(frozen=True)
class SentMessage:
    wamid: str
    recipient_wa_id: str | None = None


@dataclass(frozen=True)
class Outgoing:
    """One message to send: `message` holds `type` and its object (`text`, `template`, …).

    A customer known only by WhatsApp's business-scoped user id is addressed with
    `recipient` (and an empty `to`). It leaves no earlier than `send_at`, a
    `time.monotonic()` reading (the throughput limit's slot). `key` is the caller's, for
    its `Gate`.
    """

    to: str
    message: dict[str, Any]
    phone_number_id: str | None = None
    recipient: str | None = None
    send_at: float = 0.0
    key: Any = None


class Gate(Protocol):
    """Consulted by `send_many` on the client's event loop: `check` just before a message
    leaves (an exception returned is its result, and nothing is sent), `observe` with each
    result as it arrives, before the batch is over."""

    def check(self, outgoing: Outgoing) -> Exception | None: ...

    def observe(self, outgoing: Outgoing, result: SentMessage | Exception) -> None: ...


class WhatsAppClient:
    """One pooled connection set to the Graph API; thread-safe, reuse it, and close it."""

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
        self._prefix = f"{base_url.rstrip('/')}/{api_version}"
        self._timeout_seconds = timeout_seconds
        self._max_connections = max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def send(
        self,
        to: str,
        message: dict[str, Any],
        phone_number_id: str | None = None,
        *,
        recipient: str | None = None,
    ) -> SentMessage:
        """Send one message now (see `Outgoing`); raises what the send came to."""
        [result] = self.send_many([Outgoing(to, message, phone_number_id, recipient)])
        if isinstance(result, Exception):
            raise result
        return result

    def send_many(
        self, outgoing: Sequence[Outgoing], gate: Gate | None = None
    ) -> list[SentMessage | Exception]:
        """Send messages concurrently, each at its `send_at`; returns, in order, what each
        came to: its `SentMessage`, or the error it met (`GraphAPIError`, aiohttp's, or
        what the gate stopped it with)."""
        if not outgoing:  # a batch of duplicates: no hand-off, nor a loop to start
            return []

        async def one(item: Outgoing) -> SentMessage | Exception:
            try:
                result: SentMessage | Exception = await self._send(item, gate)
            except Exception as error:
                result = error
            if gate is not None:
                gate.observe(item, result)
            return result

        async def all_of() -> list[SentMessage | Exception]:
            return await asyncio.gather(*map(one, outgoing))

        return self._run(all_of())

    def media_url(self, media_id: str) -> dict[str, Any]:
        """Metadata of an inbound media id: a short-lived `url`, `mime_type`, `file_size`."""
        return self.get(media_id)

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """One Graph API object or edge page (`GET /{version}/{path}`), as JSON."""
        return self._run(self._get(f"{self._prefix}/{path}", params))

    def get_all(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every item of a paged edge (e.g. `{waba-id}/message_templates`): its `data`,
        following `paging.next` to the last page."""

        async def all_pages() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            page = await self._get(f"{self._prefix}/{path}", params)
            while True:
                items += page.get("data") or []
                following = (page.get("paging") or {}).get("next")
                if not following:
                    return items
                page = await self._get(following, None)

        return self._run(all_pages())

    async def _get(self, url: str, params: dict[str, str] | None) -> dict[str, Any]:
        async with self._session.get(
            url, params=params, headers=self._auth, allow_redirects=False
        ) as response:
            if response.status >= 400:
                raise await GraphAPIError.read(response)
            return json.loads(await response.read())

    def download(self, url: str, max_bytes: int) -> bytes:
        """The content behind a media `url` (it needs the same bearer token), up to `max_bytes`."""

        async def get() -> bytes:
            chunks, size = [], 0
            # Left early, the connection is closed rather than returned to the pool.
            async with self._session.get(
                url, headers=self._auth, allow_redirects=False
            ) as response:
                if response.status >= 400:
                    raise await GraphAPIError.read(response)
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise GraphAPIError(413, None, f"media larger than {max_bytes} bytes")
                    chunks.append(chunk)
            return b"".join(chunks)

        return self._run(get())

    def close(self) -> None:
        with self._starting:
            loop, self._loop = self._loop, None
            if loop is None:
                return
            asyncio.run_coroutine_threadsafe(self._session.close(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join()
            loop.close()

    async def _send(self, outgoing: Outgoing, gate: Gate | None = None) -> SentMessage:
        delay = outgoing.send_at - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        refusal = gate.check(outgoing) if gate is not None else None
        if refusal is not None:
            raise refusal
        if self.dev_mode:
            label = outgoing.message.get("template", {}).get("name") or outgoing.message["type"]
            address = outgoing.to or outgoing.recipient or ""
            # Our message id, or (for a reply, which has none) a random one: never repeated.
            unique = outgoing.message.get("biz_opaque_callback_data") or uuid.uuid4().hex[:16]
            return SentMessage(wamid=f"dev_{address.lstrip('+')}_{label}_{unique}")
        address = {"to": outgoing.to} if outgoing.to else {"recipient": outgoing.recipient}
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            **address,
            **outgoing.message,
        }
        phone_number_id = outgoing.phone_number_id or self.phone_number_id
        async with self._session.post(
            f"{self._prefix}/{phone_number_id}/messages",
            data=json.dumps(body).encode(),
            headers=self._json,
            allow_redirects=False,
        ) as response:
            if response.status >= 400:
                raise await GraphAPIError.read(response)
            data = json.loads(await response.read())
        contacts = data.get("contacts") or [{}]
        return SentMessage(
            wamid=data["messages"][0]["id"], recipient_wa_id=contacts[0].get("wa_id")
        )

    def start(self) -> None:
        """Start the client's loop and session now rather than on first use: a sender does,
        so that its first sends keep their throughput slots instead of waiting for
        aiohttp to load."""
        self._running_loop()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        """`work` on the client's loop. A `close()` from another thread (a process shutting
        down) stops that loop, and work it never started would be waited on for ever."""
        loop = self._running_loop()
        future = asyncio.run_coroutine_threadsafe(work, loop)
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if loop.is_running():
                    continue
                if future.cancel():
                    work.close()
                    raise ClientClosed("the WhatsApp client closed before the request") from None
                raise RuntimeError("the WhatsApp client closed during the request") from None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The client's loop, started on first use (so that a process that forks before
        using the client gives its child no loop without a thread)."""
        with self._starting:
            if self._loop is None:
                self._start()
            return self._loop

    def _start(self) -> None:
        # Imported here: most processes that load the definitions never send (10 MB).
        import aiohttp

        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="graph-api", daemon=True)
        self._thread.start()

        async def open_session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=5.0, sock_read=self._timeout_seconds
                ),
            )

        self._session = asyncio.run_coroutine_threadsafe(open_session(), loop).result()
        self._loop = loop


class WhatsAppResource(ConfigurableResource):
    access_token: str | None = None
    phone_number_id: str = settings.BY_NAME["WHATSAPP_PHONE_NUMBER_ID"].default
    base_url: str = settings.BY_NAME["WHATSAPP_API_BASE_URL"].default
    api_version: str = settings.BY_NAME["WHATSAPP_API_VERSION"].default
    timeout_seconds: float = 10.0
    max_connections: int = 64

    _client: WhatsAppClient | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(
        cls, source: settings.Source = settings.NOW, **tuning: Any
    ) -> WhatsAppResource:
        """The one way it is built, by the code location and by every process; `tuning`
        sets the fields that are no setting (the sender's time limit and connections)."""
        return cls(
            access_token=source.text("WHATSAPP_ACCESS_TOKEN"),
            phone_number_id=source.text("WHATSAPP_PHONE_NUMBER_ID"),
            base_url=source.text("WHATSAPP_API_BASE_URL"),
            api_version=source.text("WHATSAPP_API_VERSION"),
            **tuning,
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

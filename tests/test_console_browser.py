"""The operator console in a real browser (Playwright driving the system's Chromium, no
browser download): an operator signs in, finds the customer who asked for a human at the
top of the live inbox, takes over, answers and hands back, by keyboard, on a phone-sized
screen and a desktop one; a script in the customer's name and message never runs.

Skipped, saying so, where no Chromium is installed (Debian: `apt-get install chromium`;
or point `CHROMIUM` at one)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from resources import tenants
from resources.whatsapp import WhatsAppClient
from tests import payloads as p
from tests.servers import serve
from tests.webhook_support import add_organisation, fake_graph, rows, scalar, wait_until
from webhook_app.workers import app_with_workers

playwright_api = pytest.importorskip("playwright.sync_api")

SCRIPT = "<script>alert('pwned')</script>"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )


@pytest.fixture(scope="module")
def browser() -> Iterator:
    executable = _chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found (apt-get install chromium, or set CHROMIUM): the console's"
            " browser test did not run"
        )
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


def _post(url: str, payload: dict) -> None:
    body, headers = p.signed(payload)
    assert httpx.post(f"{url}/webhook", content=body, headers=headers).status_code == 200


@pytest.mark.parametrize("screen", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_an_operator_takes_over_from_the_inbox_and_hands_back_by_keyboard(
    browser, engine, monkeypatch, tmp_path: Path, screen
):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")
    organisation = add_organisation(engine)
    token = tenants.create_token(engine, str(organisation), {"name": "console"})["token"]
    model = FakeListChatModel(responses=["Happy to help."])
    with fake_graph() as (graph, graph_url):
        whatsapp = WhatsAppClient("test-token", p.PHONE_NUMBER_ID, graph_url, "v25.0", 5.0, 8)
        with serve(app_with_workers(model, whatsapp)) as url:
            _post(
                url,
                p.inbound(p.text("Opening hours?", wa_id="16505550001"), wa_id="16505550001"),
            )
            wait_until(lambda: len(graph.accepted()) == 1)

            page = browser.new_page(viewport=screen)
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(f"{url}/console")
            assert page.url.endswith("/console/login")
            page.get_by_label("Your name").fill("Bo")
            page.get_by_label("Operator token").fill(token)
            page.keyboard.press("Enter")
            page.wait_for_url(f"{url}/console")

            # The customer asks for a human while the inbox is open: it comes to the top.
            _post(url, p.inbound(p.text(SCRIPT), p.text("I need a human"), name=SCRIPT))
            flagged = page.locator("#inbox li.flagged")
            flagged.wait_for(timeout=30_000)
            assert page.locator("#inbox li").first.get_attribute("class") == "flagged"
            assert flagged.locator(".name").inner_text() == SCRIPT  # shown as text
            page.screenshot(path=tmp_path / "inbox.png", full_page=True)

            flagged.locator("a").focus()
            page.keyboard.press("Enter")
            page.wait_for_url("**/console/conversations/*")
            assert page.locator(".message .body", has_text=SCRIPT).count() == 1
            page.get_by_role("button", name="Take over").focus()
            page.keyboard.press("Enter")
            page.get_by_text("Taken over: the agent is silent.").wait_for()
            assert (
                scalar(
                    engine,
                    "SELECT takeover_by FROM conversations WHERE needs_human = false"
                    " AND human_takeover",
                )
                == "Bo"
            )

            page.get_by_label("Message").fill("Hi, Bo here. How can I help?")
            page.get_by_role("button", name="Send").focus()
            page.keyboard.press("Enter")
            page.get_by_text("Sent.").wait_for()
            wait_until(
                lambda: (
                    graph.accepted()[-1].get("text", {}).get("body")
                    == "Hi, Bo here. How can I help?"
                )
            )
            page.locator(".message.operator").wait_for()
            page.screenshot(path=tmp_path / "conversation.png", full_page=True)

            page.get_by_role("button", name="Hand back to the agent").focus()
            page.keyboard.press("Enter")
            page.get_by_text("Handed back to the agent.").wait_for()
            page.goto(f"{url}/console/campaigns")
            page.screenshot(path=tmp_path / "campaigns.png", full_page=True)
            page.close()
    assert dialogs == []
    events = rows(engine, "SELECT kind, operator FROM conversation_events ORDER BY id")
    assert [tuple(e) for e in events] == [
        ("flagged", "agent"),
        ("takeover", "Bo"),
        ("handback", "Bo"),
    ]
    assert scalar(engine, "SELECT human_takeover FROM conversations WHERE needs_human") is None

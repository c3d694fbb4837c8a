"""A screenshot of the Dagster UI's global asset lineage, every group expanded, to check by
eye that it reads left to right as the README's flow does. Not part of the suite: starting
the webserver costs a minute on a busy machine.

    python -m tests.lineage_screenshot [OUT.png]

It serves the code location with `dagster-webserver` on a free loopback port and a throwaway
`DAGSTER_HOME`, and drives a headless Chromium (Debian's `chromium`, or `CHROMIUM`) with
Playwright. Loading the definitions touches no server, so no database is needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1600, "height": 1200}
START_SECONDS = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/server_info", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"dagster-webserver did not answer within {START_SECONDS} s")


def expanded_lineage(page: Page, url: str, out: Path) -> None:
    page.goto(f"{url}/asset-groups", wait_until="networkidle", timeout=120_000)
    page.locator('foreignObject.group [aria-label="unfold_more"]').first.wait_for(timeout=120_000)
    skip = page.get_by_role("button", name="Skip")  # the first visit's newsletter dialog
    if skip.count():
        skip.click()
    folded = page.locator('foreignObject.group [aria-label="unfold_more"]')
    while folded.count():
        before = folded.count()
        folded.first.click()
        page.wait_for_function(
            "n => document.querySelectorAll("
            "'foreignObject.group [aria-label=\"unfold_more\"]').length < n",
            arg=before,
        )
    page.get_by_text("Hide navigation").click()
    page.locator('[aria-label="panel_show_right"]').first.click()  # the asset sidebar
    for _ in range(4):
        page.locator('[aria-label="zoom_out"]').first.click()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out))


def main(out: Path) -> None:
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no Chromium found: apt-get install chromium, or set CHROMIUM")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home:
        server = subprocess.Popen(
            [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-p", str(port)],
            cwd=ROOT,
            env={**os.environ, "DAGSTER_HOME": home},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_serving(url, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium, args=["--no-sandbox"]
                )
                expanded_lineage(browser.new_page(viewport=VIEWPORT), url, out)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "lineage.png").resolve())

"""Playwright (Python) driving Debian's Chromium; nothing here downloads a browser."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def chromium_or_skip() -> Path:
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's Chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.async_api", reason="playwright (Python) is not installed in the venv")
    return CHROMIUM


@asynccontextmanager
async def browser_page(*, viewport: dict[str, int] | None = None, **context: Any) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = chromium_or_skip()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(executable), headless=True, args=ARGS)
        try:
            ctx = await browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, **context)
            page = await ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Script errors only: a 503 from a switched-off service is shown in the page, not an error.
            page.on("console", lambda msg: errors.append(msg.text)
                    if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
            page.kitt_errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            await browser.close()


async def log_in(page: Any, base_url: str, token: str) -> None:
    await page.goto(f"{base_url}/")
    assert page.url.endswith("/login")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base_url}/")
    # The live channel is up once the indicator says so; changes after this point arrive by push.
    await page.wait_for_selector("#live.on", timeout=20_000)

"""The panel in a real browser (Chromium via Playwright) against a real hub, broker, database and simulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.mqtt import TestClient
from tests.support.wait import eventually
from tests.support.web_browser import browser_page, log_in
from tests.support.web_hub import get_json, web_hub

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.async_api", reason="playwright (Python) is not installed")
expect = playwright.expect

SCREENSHOTS = Path("/tmp/kitt-panel-screenshots")


async def test_login_then_watch_a_device_change_live(db_dsn: str, state_dir: Path) -> None:
    async with web_hub(dsn=db_dsn, state_dir=state_dir, jobs={}) as w, browser_page() as page:
        await page.goto(f"{w.base_url}/")
        await page.fill("#token", "not-the-token")
        await page.click("button[type=submit]")
        assert "not right" in await page.text_content(".error")
        await log_in(page, w.base_url, w.token)
        await page.click("a[data-tab=devices]")
        state = page.locator('[data-state="kitchen_light"]')
        await state.wait_for()
        await expect(state).to_contain_text("OFF")
        # Someone switches the light by hand: the bridge reports it, the panel shows it without a reload.
        w.sim.set_state("kitchen_light", state="ON", brightness=200)
        await expect(state).to_contain_text("ON", timeout=20_000)
        assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert page.kitt_errors == []


async def test_approve_a_pending_unlock_sends_exactly_one_command(db_dsn: str, state_dir: Path) -> None:
    # The default bridge topics, as a real Zigbee2MQTT uses them: zigbee2mqtt/front_door/set.
    async with web_hub(dsn=db_dsn, state_dir=state_dir, isolate=False, jobs={}) as w, \
            TestClient(1883) as mqtt, browser_page() as page, aiohttp.ClientSession() as http:
        sets = await mqtt.collect("zigbee2mqtt/front_door/set")
        await log_in(page, w.base_url, w.token)
        await page.click("a[data-tab=devices]")
        await page.click('[data-device="front_door"] button[data-action="unlock"]')
        dialog = page.locator("#confirm-dialog")
        await dialog.wait_for(state="visible")
        assert "unlock" in (await page.text_content("#confirm-text")).lower()
        pending = await get_json(http, f"{w.base_url}/api/v1/confirmations?state=pending", w.headers)
        (confirmation,) = pending["confirmations"]
        assert sets.messages == [] or all(m.user_properties.get("id") != f"confirm:{confirmation['id']}"
                                          for m in sets.messages)
        await page.click("#confirm-yes")
        await dialog.wait_for(state="hidden")

        key = f"confirm:{confirmation['id']}"

        async def ours() -> list:
            return [m for m in sets.messages if m.user_properties.get("id") == key]

        await eventually(ours)
        await sets.settle(quiet_s=1.0)
        mine = await ours()
        assert len(mine) == 1
        assert json.loads(mine[0].payload) == {"state": "UNLOCK"}

        async def done() -> bool:
            c = await get_json(http, f"{w.base_url}/api/v1/confirmations/{confirmation['id']}", w.headers)
            return c["state"] == "done"

        await eventually(done)
        await page.click("a[data-tab=confirmations]")
        await page.wait_for_selector(f'#recent-confirmations [data-confirmation="{confirmation["id"]}"]'
                                     '[data-state="done"]', timeout=20_000)
        assert await page.locator("#pending-list [data-confirmation]").count() == 0


async def test_run_a_routine_and_see_its_run_appear(db_dsn: str, state_dir: Path) -> None:
    async with web_hub(dsn=db_dsn, state_dir=state_dir) as w, browser_page() as page:
        if w.hub.services.jobs is None:
            pytest.skip("the job service is not wired into the hub in this build")
        await log_in(page, w.base_url, w.token)
        await page.click("a[data-tab=routines]")
        await page.click('button[data-run="daily_health_check"]')
        run = page.locator('#run-list [data-job-run="daily_health_check"]')
        await run.first.wait_for()
        # The run finishes on the hub; the live channel pushes its new status.
        await page.wait_for_selector('#run-list [data-job-run="daily_health_check"] .ok', timeout=40_000)
        assert "succeeded" in await run.first.text_content()


async def test_dashboard_on_a_phone(db_dsn: str, state_dir: Path) -> None:
    phone = {"width": 390, "height": 844}
    async with web_hub(dsn=db_dsn, state_dir=state_dir) as w, \
            browser_page(viewport=phone, is_mobile=True, has_touch=True, device_scale_factor=2) as page:
        await log_in(page, w.base_url, w.token)
        await page.wait_for_selector('[data-card="Spine"] .ok')
        # Nothing wider than the screen: no sideways scrolling of the page.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await asyncio.to_thread(SCREENSHOTS.mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "dashboard-phone.png"), full_page=True)
        await page.click("a[data-tab=devices]")
        await page.wait_for_selector('[data-device="front_door"]')
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await page.screenshot(path=str(SCREENSHOTS / "devices-phone.png"), full_page=True)
        assert page.kitt_errors == []

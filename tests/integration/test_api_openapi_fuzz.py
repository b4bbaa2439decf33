"""Property-based requests generated from the OpenAPI document (schemathesis) against a real hub.

Every operation, with bodies and parameters drawn from the document's schemas: no answer may be a 5xx, and
every answer must be documented (status code, content type, body schema). The hub runs on its own event
loop in a thread because schemathesis drives synchronous requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from hub.web.api import all_endpoints  # noqa: E402
from hub.web.openapi import build_document  # noqa: E402
from tests.support.db import temporary_database  # noqa: E402
from tests.support.web_hub import web_hub  # noqa: E402

pytestmark = pytest.mark.integration

# The served document equals this one (tests/unit/test_web_openapi.py asserts it).
schema = schemathesis.openapi.from_dict(build_document(all_endpoints()))

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


class HubThread:
    """A real hub on its own loop; ``base_url`` and ``token`` once it is ready."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.base_url = ""
        self.token = ""
        self._thread = threading.Thread(target=self._run, name="kitt-test-hub", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread in start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with temporary_database() as dsn, web_hub(dsn=dsn, state_dir=self._state_dir) as w:
            self.base_url, self.token = w.base_url, w.token
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise RuntimeError("the hub did not start") from self._error
        assert self.base_url, "the hub did not become ready in time"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubThread]:
    hub = HubThread(tmp_path_factory.mktemp("fuzz-state"))
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_5xx_and_every_answer_is_documented(case: Any, live_hub: HubThread) -> None:
    case.call_and_validate(base_url=live_hub.base_url, headers={"Authorization": f"Bearer {live_hub.token}"},
                           checks=CHECKS)

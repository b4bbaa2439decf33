"""A scripted Hermes satellite for tests: publishes what a Rhasspy/Snips satellite publishes and reads what the
hub sends back, filtered by siteId (Hermes topics are global; a unique siteId per test keeps tests apart).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.mqtt import Collector, Received, TestClient


def unique_site(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Heard:
    topic: str
    body: dict[str, Any]
    at: float


class Satellite:
    """Satellites on several sites over one MQTT client. Use ``await Satellite.open(client, sites)``."""

    def __init__(self, client: TestClient, sites: tuple[str, ...], collector: Collector) -> None:
        self.client = client
        self.sites = set(sites)
        self._col = collector

    @classmethod
    async def open(cls, client: TestClient, sites: tuple[str, ...]) -> Satellite:
        return cls(client, sites, await client.collect("hermes/#", qos=1))

    # --- what the hub said ----------------------------------------------------------------------------

    def heard(self, topic: str | None = None, *, site: str | None = None, session: str | None = None,
              since: int = 0) -> list[Heard]:
        out = []
        for msg in self._col.messages[since:]:
            h = self._parse(msg)
            if h is None or (topic is not None and h.topic != topic):
                continue
            if site is not None and h.body.get("siteId") != site:
                continue
            if session is not None and h.body.get("sessionId") != session:
                continue
            out.append(h)
        return out

    def _parse(self, msg: Received) -> Heard | None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("siteId") not in self.sites:
            return None
        return Heard(msg.topic, body, msg.at)

    @property
    def mark(self) -> int:
        """A position in the stream: pass as ``since`` to see only what came after."""
        return len(self._col.messages)

    async def wait(self, topic: str, *, site: str, session: str | None = None, since: int = 0,
                   where: Callable[[dict[str, Any]], bool] = lambda b: True, timeout: float = 10.0) -> Heard:
        deadline = time.monotonic() + timeout
        while True:
            for h in self.heard(topic, site=site, session=session, since=since):
                if where(h.body):
                    return h
            if time.monotonic() > deadline:
                seen = [(h.topic, h.body) for h in self.heard(site=site, since=since)][-12:]
                raise TimeoutError(f"no {topic} for {site}/{session} within {timeout}s; saw {seen}")
            await asyncio.sleep(0.01)

    # --- what the satellite says ----------------------------------------------------------------------

    async def _send(self, topic: str, body: dict[str, Any], qos: int = 1) -> None:
        await self.client.publish(topic, json.dumps(body), qos=qos)

    async def hotword(self, site: str, session: str, wakeword: str = "porcupine") -> None:
        await self._send(f"hermes/hotword/{wakeword}/detected",
                         {"modelId": wakeword, "siteId": site, "sessionId": session})

    async def text(self, site: str, session: str, text: str, *, likelihood: float = 0.9, qos: int = 1) -> None:
        await self._send("hermes/asr/textCaptured", {"text": text, "likelihood": likelihood, "seconds": 0.4,
                                                     "siteId": site, "sessionId": session}, qos)

    async def say_finished(self, site: str, session: str | None, say_id: str) -> None:
        await self._send("hermes/tts/sayFinished", {"siteId": site, "sessionId": session, "id": say_id})

    async def send(self, topic: str, body: dict[str, Any]) -> None:
        await self._send(topic, body)

"""Every metric name of shared/INTERFACES.md is exported on /metrics by a running hub."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from hub.app import Hub, wait_ready
from tests.support.config import make_config

pytestmark = pytest.mark.integration

INTERFACES = Path(__file__).resolve().parents[3] / "shared" / "INTERFACES.md"
FALLBACK = (
    "kitt_messages_received_total", "kitt_messages_rejected_total", "kitt_request_latency_seconds",
    "kitt_embeddings_computed_total", "kitt_embedding_seconds", "kitt_cache_hits_total",
    "kitt_cache_misses_total", "kitt_cache_entries", "kitt_cache_evictions_total", "kitt_confirmations",
    "kitt_job_runs_total", "kitt_job_last_success_timestamp_seconds", "kitt_outbox_pending",
    "kitt_db_write_errors_total",
)


def interface_metric_names() -> list[str]:
    if not INTERFACES.exists():
        return FALLBACK
    section = INTERFACES.read_text().split("## Metrics", 1)[1]
    return sorted(set(re.findall(r"`(kitt_[a-z_]+)", section)))


async def test_metrics_endpoint_has_every_interface_name(db_dsn: str, state_dir: Path) -> None:
    names = interface_metric_names()
    assert len(names) >= 14
    config = make_config(dsn=db_dsn, state_dir=state_dir, plugins=("handlers.ask",))
    async with Hub(config) as hub:
        assert await wait_ready(hub, timeout=30)
        async with aiohttp.ClientSession() as http, http.get(f"http://{config.web.listen}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))
    # Prometheus names counters without the _total suffix in TYPE lines.
    exported |= {f"{n}_total" for n in exported}
    missing = [n for n in names if n not in exported]
    assert missing == []

"""Vector memory is derived: ``kitt-hub vectors rebuild`` re-creates it from the PostgreSQL rows."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from hub.app import Hub, wait_ready
from hub.cli import main
from tests.support.config import make_config
from tests.support.hubproc import dumps_toml

pytestmark = pytest.mark.integration


async def test_memory_survives_losing_the_vector_index(db_dsn: str, state_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(dsn=db_dsn, state_dir=state_dir, plugins=())
    turns = ["the kitchen light was turned on at dawn", "the front door was locked for the night",
             "someone asked about the weather in Berlin"]
    async with Hub(config) as hub:
        assert await wait_ready(hub, timeout=30)
        await asyncio.wait_for(hub.services.embedder.wait_ready(), 60)
        for text in turns:
            await hub.services.memory.remember(text, await hub.services.embedder.embed(text), site="kitchen")
        await hub.services.vectors.flush()

    shutil.rmtree(state_dir / "vectors")  # the index is lost; the rows are not
    cfg = state_dir / "cli.toml"
    cfg.write_text(dumps_toml({"hub": {"id": config.hub.id, "state_dir": str(state_dir)},
                               "database": {"url": db_dsn}, "web": {"listen": config.web.listen},
                               "embeddings": {"model": str(config.embeddings.model),
                                              "tokenizer": str(config.embeddings.tokenizer)}}))
    code = await asyncio.to_thread(main, ["vectors", "rebuild", "--config", str(cfg)])
    assert code == 0
    assert "3 turns" in capsys.readouterr().out

    async with Hub(config) as hub:
        assert await wait_ready(hub, timeout=30)
        await asyncio.wait_for(hub.services.embedder.wait_ready(), 60)
        while hub.services.memory is None:
            await asyncio.sleep(0.05)
        hits = await hub.services.memory.recall(await hub.services.embedder.embed("is the door locked"),
                                                site="kitchen", limit=1)
        assert hits and hits[0].payload["text"] == "the front door was locked for the night"


def test_rebuild_refuses_while_the_hub_owns_the_embedded_index(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import http.server
    import threading

    class Alive(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a hub's /healthz
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"alive": true}')

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Alive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[web]\nlisten = "127.0.0.1:{server.server_port}"\n')
        assert main(["vectors", "rebuild", "--config", str(cfg)]) == 3
        assert "stop it first" in capsys.readouterr().err
    finally:
        server.shutdown()

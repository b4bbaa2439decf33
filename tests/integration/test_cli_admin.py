"""The admin commands against a running hub's API: status, confirm list/approve/cancel, cache stats."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hub.cli import main
from hub.contracts import DeviceAction, Principal
from tests.support.hubproc import dumps_toml
from tests.support.hubs import devices_config, devices_hub
from tests.support.mqtt import TestClient

pytestmark = pytest.mark.integration


def _cli_config(config, path: Path) -> Path:
    path.write_text(dumps_toml({"hub": {"id": config.hub.id},
                                "web": {"listen": config.web.listen, "token": config.web.token}}))
    return path


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().out


async def test_confirm_list_and_approve_from_the_command_line(db_dsn: str, state_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir, plugins=("handlers.devices", "handlers.confirmations"))
    async with devices_hub(config) as run, TestClient(config.mqtt.port) as watcher:
        cfg = str(_cli_config(config, state_dir / "cli.toml"))
        base = config.devices["front_door"].model_extra["base_topic"]
        commands = await watcher.collect(f"{base}/front_door/set")
        service = run.hub.services.confirmations
        a = await service.request(DeviceAction("front_door", "unlock"), hazard_class="lock.unlock",
                                  principal=Principal(kind="voice", site="kitchen", session_id="s"))
        b = await service.request(DeviceAction("front_door", "unlock"), hazard_class="lock.unlock",
                                  principal=Principal(kind="voice", site="kitchen", session_id="s2"))

        code, out = await _run(capsys, "status", "--config", cfg)
        assert code == 0 and "READY" in out

        code, out = await _run(capsys, "confirm", "list", "--config", cfg)
        assert code == 0 and a.id in out and b.id in out and "unlock the front door" in out

        code, out = await _run(capsys, "confirm", "cancel", b.id, "--config", cfg)
        assert code == 0 and "cancelled" in out
        code, out = await _run(capsys, "confirm", "approve", a.id, "--config", cfg)
        assert code == 0 and "executing" in out
        await commands.wait_for(1, timeout=10)
        await asyncio.sleep(0.5)
        assert len(commands.messages) == 1

        code, out = await _run(capsys, "confirm", "list", "--config", cfg)
        assert "no pending confirmations" in out
        with pytest.raises(SystemExit) as refused:
            await asyncio.to_thread(main, ["confirm", "approve", a.id, "--config", cfg])
        assert refused.value.code == 1  # already decided: the API's 409 reaches the user

        code, out = await _run(capsys, "cache", "stats", "--config", cfg)
        assert code == 0 and "hit_ratio=" in out


def test_commands_say_clearly_when_no_hub_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[web]\nlisten = "127.0.0.1:9"\ntoken = "x"\n')
    with pytest.raises(SystemExit) as err:
        main(["status", "--config", str(cfg)])
    assert err.value.code == 3
    assert "the hub does not answer" in capsys.readouterr().err

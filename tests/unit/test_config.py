from pathlib import Path

import pytest

from hub.cli import main
from hub.config import apply_env_overrides, load_config
from hub.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_default_config_file_is_valid() -> None:
    config = load_config(REPO / "config.toml", environ={})
    assert config.database.url == "embedded"
    assert set(config.devices) >= {"kitchen_light", "living_room_lamp", "front_door", "garage_door",
                                   "living_room_thermostat", "oven", "alarm"}
    assert config.voice.sites == ("kitchen", "bedroom")
    assert set(config.jobs) == {"daily_health_check", "weekly_research_cycle", "project_generation_cycle",
                                "task_execution_cycle", "outcome_measurement_cycle"}


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nurl = 42\n[database]\npool_max = -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, environ={})
    problems = err.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("mqtt.url: ")
    assert problems[1].startswith("database.pool_max: ")


def test_config_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--config", str(REPO / "config.toml")]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nurl = 42\n[database]\npool_max = -1\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "check", "--config", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("mqtt.url:") for line in err)
    assert any(line.startswith("database.pool_max:") for line in err)
    assert not any("Traceback" in line for line in err)


def test_environment_overrides_win_and_are_typed(tmp_path: Path) -> None:
    config = load_config(REPO / "config.toml", environ={
        "KITT__MQTT__URL": "mqtts://u:p@broker.lan:8883",
        "KITT__DATABASE__POOL_MAX": "12",
        "KITT__VOICE__SITES": '["hall"]',
        "KITT__DEVICES__OVEN__AREA": "utility",
    })
    assert config.mqtt.host == "broker.lan" and config.mqtt.port == 8883 and config.mqtt.tls
    assert config.mqtt.username == "u" and config.mqtt.password == "p"
    assert config.mqtt.redacted_url() == "mqtts://broker.lan:8883"  # no secret in logs
    assert config.database.pool_max == 12
    assert config.voice.sites == ("hall",)
    assert config.devices["oven"].area == "utility"


def test_env_override_of_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "config.toml", environ={"KITT__MQTT__NOPE": "1"})
    assert err.value.problems == ["mqtt.nope: Extra inputs are not permitted (got 1)"]


def test_secrets_come_from_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    key = tmp_path / "key"
    key.write_text("sk-1\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[web]\ntoken_file = "{token}"\n[frontier]\nbase_url = "http://x"\napi_key_file = "{key}"\n')
    config = load_config(cfg, environ={})
    assert config.web.token == "s3cret"
    assert config.frontier.api_key == "sk-1"


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[frontier]\nbase_url = "http://x"\napi_key_file = "/nonexistent/key"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert err.value.problems[0].startswith("frontier: cannot read secret file")


def test_apply_env_overrides_creates_nested_sections() -> None:
    data = apply_env_overrides({}, {"KITT__A__B__C": "true", "OTHER": "x"})
    assert data == {"a": {"b": {"c": True}}}


def test_pool_bounds_checked_together() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"KITT__DATABASE__POOL_MIN": "40", "KITT__DATABASE__POOL_MAX": "10"})
    assert err.value.problems[0].startswith("database: ")

"""Test configurations: a unique hub id (so MQTT topics never collide between tests) and a given database."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

from hub.config import Config

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def demo_devices() -> dict[str, Any]:
    """The devices of the default config.toml."""
    import tomllib

    return tomllib.loads((REPO / "config.toml").read_text())["devices"]


def make_config_dict(*, dsn: str, state_dir: Path, mqtt_port: int = 1883, plugins: tuple[str, ...] = (),
                     hub_id: str | None = None, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "hub": {"id": hub_id or f"t{uuid.uuid4().hex[:8]}", "state_dir": str(state_dir), "log_level": "warning"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "keepalive_s": 5},
        "database": {"url": dsn, "pool_min": 2, "pool_max": 10},
        "web": {"listen": f"127.0.0.1:{free_port()}", "token": "test-token-" + uuid.uuid4().hex[:8]},
        "embeddings": {"model": str(REPO / "models/onnx/model_int8.onnx"),
                       "tokenizer": str(REPO / "models/onnx/tokenizer.json")},
        "plugins": list(plugins),
        "jobs": {},
    }
    return deep_merge(data, sections)


def make_config(**kwargs: Any) -> Config:
    return Config.model_validate(make_config_dict(**kwargs))

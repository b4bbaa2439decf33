"""Configuration: ``config.toml`` plus ``KITT__SECTION__KEY`` overrides, validated once, frozen, passed in.

Every problem is reported with its key path (``mqtt.url: …``) so ``kitt-hub config check`` can print one line
per problem. Secrets may come from files (``token_file``, ``api_key_file``, ``pin_hash_file``) or from
systemd credentials (``$CREDENTIALS_DIRECTORY``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hub.errors import ConfigError

ENV_PREFIX = "KITT__"
DEFAULT_PATHS = (Path("config.toml"),)


class Section(BaseModel):
    """Strict for what users write: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_file(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() and (creds := os.environ.get("CREDENTIALS_DIRECTORY")):
        candidate = Path(creds) / path
        if candidate.exists():
            p = candidate
    try:
        return p.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path!r}: {exc.strerror}") from exc


class HubSection(Section):
    id: str = Field(default="kitt", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    state_dir: Path = Path("./var")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "console"
    drain_timeout_s: float = Field(default=10.0, gt=0, le=300)


class MqttSection(Section):
    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = ""  # empty: "kitt-<hub_id>"
    session_expiry_s: int = Field(default=6 * 3600, ge=0, le=0xFFFFFFFF)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    receive_maximum: int = Field(default=64, ge=1, le=65535)
    shared_group: str = ""
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600)
    inbox_retention_s: int = Field(default=7 * 24 * 3600, ge=60)
    tls_ca_file: str = ""
    tls_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("has no host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        return v

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v):
            raise ValueError("must be letters, digits, '_' or '-'")
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl")

    @property
    def username(self) -> str | None:
        return urlsplit(self.url).username

    @property
    def password(self) -> str | None:
        return urlsplit(self.url).password

    def redacted_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{self.port}"


class DatabaseSection(Section):
    url: str = "embedded"
    pool_min: int = Field(default=4, ge=1, le=200)
    # Sized for the workload: spine inbox writers + outbox relay + jobs + web; not the earlier 5+10.
    pool_max: int = Field(default=32, ge=1, le=500)
    command_timeout_s: float = Field(default=10.0, gt=0)
    slow_query_ms: float = Field(default=200.0, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v != "embedded" and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError('must be "embedded" or a postgresql:// URL')
        return v

    @model_validator(mode="after")
    def _pool(self) -> DatabaseSection:
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self


class RedisSection(Section):
    url: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (in-process cache) or a redis:// URL")
        return v


class VectorsSection(Section):
    url: str = ""
    api_key: str = ""
    api_key_file: str = ""
    flush_interval_ms: int = Field(default=200, ge=1, le=60_000)

    @model_validator(mode="after")
    def _secret(self) -> VectorsSection:
        if self.api_key_file and not self.api_key:
            object.__setattr__(self, "api_key", _read_secret_file(self.api_key_file) or "")
        return self


class EmbeddingsSection(Section):
    model: Path = Path("models/onnx/model_int8.onnx")
    tokenizer: Path = Path("models/onnx/tokenizer.json")
    threads: int = Field(default=1, ge=1, le=64)
    lru_size: int = Field(default=4096, ge=0)


class CacheSection(Section):
    ttl_s: int = Field(default=24 * 3600, ge=1)
    max_entries: int = Field(default=10_000, ge=1)
    threshold: float = Field(default=0.92, gt=0, le=1)


class WebSection(Section):
    listen: str = "127.0.0.1:8080"
    token: str = ""
    token_file: str = ""
    login_max_failures: int = Field(default=5, ge=1)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return v

    @model_validator(mode="after")
    def _secret(self) -> WebSection:
        # A missing token file is not an error: the hub creates one (mode 0600) on its first start.
        if self.token_file and not self.token and self.token_path().exists():
            object.__setattr__(self, "token", _read_secret_file(str(self.token_path())) or "")
        return self

    def token_path(self) -> Path:
        p = Path(self.token_file or "var/web-token")
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not p.is_absolute() and creds and (Path(creds) / p).exists():
            return Path(creds) / p
        return p

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class VoiceSection(Section):
    sites: tuple[str, ...] = ("kitchen", "bedroom")
    session_timeout_s: float = Field(default=60.0, gt=0)
    listen_timeout_s: float = Field(default=10.0, gt=0)
    confirm_timeout_s: float = Field(default=15.0, gt=0)
    handler_timeout_s: float = Field(default=5.0, gt=0)
    external_intents: tuple[str, ...] = ()
    min_asr_likelihood: float = Field(default=0.0, ge=0, le=1)
    language: str = "en"


class HazardClass(Section):
    level: Literal["ack", "pin"] = "ack"
    timeout_s: float = Field(default=60.0, gt=0)


def _default_hazard_classes() -> dict[str, HazardClass]:
    return {
        "lock.unlock": HazardClass(level="ack"),
        "cover.open": HazardClass(level="ack"),
        "alarm.disarm": HazardClass(level="pin"),
        "appliance.on": HazardClass(level="ack"),
        "valve.open": HazardClass(level="ack"),
    }


class HazardsSection(Section):
    classes: dict[str, HazardClass] = Field(default_factory=_default_hazard_classes)
    pin_hash: str = ""
    pin_hash_file: str = ""
    max_pin_failures: int = Field(default=3, ge=1, le=100)
    lockout_s: float = Field(default=300.0, gt=0)
    allow_pin_from_homeassistant: bool = False

    @model_validator(mode="after")
    def _secret(self) -> HazardsSection:
        if self.pin_hash_file and not self.pin_hash:
            object.__setattr__(self, "pin_hash", _read_secret_file(self.pin_hash_file) or "")
        return self


class DeviceSection(BaseModel):
    """A device; adapters own the details, so extra adapter keys are allowed but the basics are checked."""

    model_config = ConfigDict(extra="allow", frozen=True)

    adapter: Literal["zigbee2mqtt", "tasmota", "generic"]
    kind: Literal["light", "switch", "lock", "cover", "climate", "alarm", "appliance", "valve", "sensor"]
    topic: str = ""
    area: str = ""
    name: str = ""
    device_class: str = ""
    aliases: tuple[str, ...] = ()
    hazard: dict[str, str | bool] = Field(default_factory=dict)
    expose_to_homeassistant: bool = False


class JobSection(Section):
    schedule: str
    enabled: bool = True
    timeout_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    misfire: Literal["skip", "once", "all"] = "once"
    catch_up_cap: int = Field(default=10, ge=0)
    timezone: str = "UTC"
    concurrency: int = Field(default=4, ge=1, le=256)


def _default_jobs() -> dict[str, JobSection]:
    return {
        "daily_health_check": JobSection(schedule="0 6 * * *"),
        "weekly_research_cycle": JobSection(schedule="0 3 * * 1", timeout_s=900),
        "project_generation_cycle": JobSection(schedule="0 4 * * *"),
        "task_execution_cycle": JobSection(schedule="every 15m", concurrency=8),
        "outcome_measurement_cycle": JobSection(schedule="0 5 * * *"),
    }


class HomeAssistantSection(Section):
    enabled: bool = True
    discovery_prefix: str = "homeassistant"
    statestream_base: str = ""
    birth_delay_max_s: float = Field(default=2.0, ge=0, le=60)


class FrontierSection(Section):
    base_url: str = ""
    model: str = ""
    api_key: str = ""
    api_key_file: str = ""
    timeout_s: float = Field(default=15.0, gt=0, le=300)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _secret(self) -> FrontierSection:
        if self.api_key_file and not self.api_key:
            object.__setattr__(self, "api_key", _read_secret_file(self.api_key_file) or "")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)


class McpServer(Section):
    command: tuple[str, ...] = ()
    url: str = ""
    timeout_s: float = Field(default=10.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> McpServer:
        if bool(self.command) == bool(self.url):
            raise ValueError("set exactly one of command (stdio) or url (streamable HTTP)")
        return self


class McpSection(Section):
    servers: dict[str, McpServer] = Field(default_factory=dict)
    http_enabled: bool = False


class TelemetrySection(Section):
    otlp_endpoint: str = ""
    service_name: str = "kitt-hub"


class Config(Section):
    hub: HubSection = HubSection()
    mqtt: MqttSection = MqttSection()
    database: DatabaseSection = DatabaseSection()
    redis: RedisSection = RedisSection()
    vectors: VectorsSection = VectorsSection()
    embeddings: EmbeddingsSection = EmbeddingsSection()
    cache: CacheSection = CacheSection()
    web: WebSection = WebSection()
    voice: VoiceSection = VoiceSection()
    hazards: HazardsSection = HazardsSection()
    devices: dict[str, DeviceSection] = Field(default_factory=dict)
    jobs: dict[str, JobSection] = Field(default_factory=_default_jobs)
    homeassistant: HomeAssistantSection = HomeAssistantSection()
    frontier: FrontierSection = FrontierSection()
    mcp: McpSection = McpSection()
    telemetry: TelemetrySection = TelemetrySection()
    # Plugins to load by dotted module path; each module exposes ``create(ctx)``.
    plugins: tuple[str, ...] = ()

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"kitt-{self.hub.id}"

    def resolve(self, path: Path) -> Path:
        """Relative paths (state_dir, models) resolve against the config file's folder."""
        return path if path.is_absolute() else (self._base_dir / path)

    _base_dir: Path = Path(".")

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.hub.state_dir)


# --- loading -------------------------------------------------------------------------------------------


def _coerce_env_value(raw: str) -> Any:
    """Env values are TOML literals when they parse as one (numbers, booleans, arrays), else strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``KITT__MQTT__URL=…`` sets ``data["mqtt"]["url"]``; deeper paths (``KITT__DEVICES__OVEN__TOPIC``) too."""
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "KITT_CONFIG":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node = data
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = _coerce_env_value(raw)
    return data


def format_validation_error(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{loc or '<root>'}: {msg}{shown}")
    return lines


def find_config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    for candidate in DEFAULT_PATHS:
        if candidate.exists():
            return candidate
    if env_path := environ.get("KITT_CONFIG"):
        return Path(env_path)
    return None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read, override, validate. Raises ``ConfigError`` with every problem, never a traceback's worth."""
    environ = os.environ if environ is None else environ
    cfg_path = find_config_path(path, environ)
    data: dict[str, Any] = {}
    if cfg_path is not None:
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError([f"<file>: {cfg_path} does not exist"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"<file>: {cfg_path} is not valid TOML: {exc}"]) from exc
    data = apply_env_overrides(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc
    base = cfg_path.resolve().parent if cfg_path is not None else Path.cwd()
    object.__setattr__(config, "_base_dir", base)
    return config

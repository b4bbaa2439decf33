"""Helpers shared by the commands: loading config with one line per problem, talking to a running hub."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib import error, request

from hub.config import Config, load_config
from hub.errors import ConfigError, KittError

if TYPE_CHECKING:
    from hub.store import Store

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="config file (default ./config.toml, then $KITT_CONFIG)")


def load_or_exit(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def hub_url(config: Config) -> str:
    """Where the running hub's web server answers this machine."""
    host = config.web.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard listen address is reached on loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.web.port}"


def hub_answers(config: Config) -> bool:
    """Whether a hub answers ``/healthz`` at the configured address."""
    try:
        with request.urlopen(f"{hub_url(config)}/healthz", timeout=1):
            return True
    except (error.URLError, OSError):
        return False


def api_call(config: Config, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 10.0) -> Any:
    """Call the running hub's HTTP API with the configured token; exit 3 with a clear line if it is down."""
    url = f"{hub_url(config)}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if config.web.token:
        req.add_header("Authorization", f"Bearer {config.web.token}")
    try:
        with request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):  # not our JSON error body: show it as it is
            detail = json.loads(detail).get("error", detail)
        print(f"{method} {path}: HTTP {exc.code}: {detail}", file=sys.stderr)
        raise SystemExit(1) from None
    except (error.URLError, OSError) as exc:
        print(f"the hub does not answer at {url}: {getattr(exc, 'reason', exc)} (is `kitt-hub run` running?)",
              file=sys.stderr)
        raise SystemExit(EXIT_UNAVAILABLE) from None


@contextlib.asynccontextmanager
async def offline_store(config: Config, *, apply_migrations: bool = True) -> AsyncIterator[Store]:
    """The configured database for a command that runs without the hub: a small pool, and the embedded
    cluster (``database.url = "embedded"``) started and stopped around it."""
    from hub.metrics import Metrics
    from hub.store import EmbeddedPostgres, Store

    embedded = None
    dsn = config.database.url
    if dsn == "embedded":
        embedded = EmbeddedPostgres(data_dir=config.state_dir / "pg")
        await embedded.start()
        dsn = embedded.dsn
    store = Store(dsn=dsn, metrics=Metrics(), pool_min=1, pool_max=2, apply_migrations=apply_migrations)
    try:
        await store.start()
        yield store
    finally:
        await store.stop()
        if embedded is not None:
            with contextlib.suppress(KittError):
                await embedded.stop()


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))

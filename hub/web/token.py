"""The web/API token: from config, else created once into ``web.token_file`` (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import structlog

from hub.config import WebSection

log = structlog.get_logger("kitt.web.token")


def ensure_token(web: WebSection) -> str:
    if web.token:
        return web.token
    path: Path = web.token_path()
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    log.warning("created a web/API token; log in to the panel with the token in this file", path=str(path))
    return token

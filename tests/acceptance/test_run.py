"""``kitt-hub run`` as a subprocess: embedded store, readiness, clean exit, nothing left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.config import REPO, free_port

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, *, mqtt_port: int = 1883) -> tuple[Path, int]:
    port = free_port()
    text = (REPO / "config.toml").read_text()
    text = text.replace('state_dir = "./var"', f'state_dir = "{tmp_path / "state"}"')
    text = text.replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"')
    text = text.replace('token_file = "var/web-token"', f'token_file = "{tmp_path / "token"}"')
    text = text.replace('url = "mqtt://127.0.0.1:1883"', f'url = "mqtt://127.0.0.1:{mqtt_port}"')
    text = text.replace('id = "kitt"', f'id = "acc{port}"')
    # The model files are the repository's (relative paths resolve against the config's own folder).
    text += (f'\n[embeddings]\nmodel = "{REPO / "models/onnx/model_int8.onnx"}"\n'
             f'tokenizer = "{REPO / "models/onnx/tokenizer.json"}"\n')
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    return cfg, port


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_for(port: int, path: str, status: int, timeout: float = 90, until=lambda body: True) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            code, body = _get(port, path)
            if code == status and until(body):
                return body
            last = (code, body)
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}: {last}")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _postgres_for(state: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "postgres" in (proc.info["name"] or "") and str(state) in cmd:
            found.append(proc)
    return found


def test_run_reaches_ready_and_ctrl_c_exits_zero_leaving_nothing(tmp_path: Path) -> None:
    cfg, port = _config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = _wait_for(port, "/readyz", 200)
        assert body["ready"] is True
        assert body["checks"]["store"]["ok"] and body["checks"]["spine"]["ok"]
        assert _get(port, "/healthz")[0] == 200
        assert _postgres_for(tmp_path / "state"), "the embedded PostgreSQL should be running"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    time.sleep(0.5)
    assert _postgres_for(tmp_path / "state") == []
    # The token was created once, private to its owner.
    assert (tmp_path / "token").stat().st_mode & 0o077 == 0


def test_not_ready_without_a_broker_but_alive_and_retrying(tmp_path: Path) -> None:
    cfg, port = _config(tmp_path, mqtt_port=free_port())  # nothing listens there
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(port, "/healthz", 200)
        # Once the store is up and the spine exists, the only reason left is the missing broker.
        body = _wait_for(port, "/readyz", 503,
                         until=lambda b: b["checks"]["store"]["ok"] and b["checks"]["spine"]["reason"] != "starting")
        assert body["ready"] is False
        assert body["reasons"] and all(r.startswith("spine: MQTT broker") for r in body["reasons"]), body
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "MQTT broker not reachable; retrying" in out
    assert "Traceback" not in out


def test_run_with_a_bad_config_fails_at_once_naming_the_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nurl = 42\n[database]\npool_max = -1\n")
    res = subprocess.run([sys.executable, "-m", "hub.cli", "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("mqtt.url:") and lines[1].startswith("database.pool_max:")
    assert "Traceback" not in res.stderr

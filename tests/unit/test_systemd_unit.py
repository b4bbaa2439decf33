"""The systemd unit (directives, `systemd-analyze verify`, exposure) and the install scripts' --dry-run."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "kitt-hub.service"
INSTALL = ROOT / "scripts" / "install.sh"
UNINSTALL = ROOT / "scripts" / "uninstall.sh"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value (systemd allows repeated keys). Comments and blanks are skipped."""
    sections: Unit = defaultdict(lambda: defaultdict(list))
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        assert current, f"directive outside a section: {raw!r}"
        assert not line.endswith("\\"), "continuation lines are not used in this unit"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        sections[current][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """systemd time spans used here: `30`, `30s`, `2min`, `1min 30s`."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[suffix]
    return total


def test_notify_and_watchdog(unit: Unit) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert seconds(one(unit, "Service", "WatchdogSec")) == 30
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) > 0


def test_timeouts_fit_the_graceful_drain(unit: Unit) -> None:
    drain_s = 10  # hub.drain_timeout_s default
    stop = seconds(one(unit, "Service", "TimeoutStopSec"))
    assert drain_s + 10 <= stop <= 90, "room for the drain plus flushes and PostgreSQL's fast shutdown"
    assert seconds(one(unit, "Service", "TimeoutStartSec")) >= 60, "a first initdb on a slow SD card"
    assert one(unit, "Service", "KillMode") == "mixed"


def test_identity_paths_and_command(unit: Unit) -> None:
    assert one(unit, "Service", "User") == "kitt-hub"
    assert one(unit, "Service", "Group") == "kitt-hub"
    assert one(unit, "Service", "StateDirectory") == "kitt-hub"
    assert one(unit, "Service", "ConfigurationDirectory") == "kitt-hub"
    assert one(unit, "Service", "WorkingDirectory") == "/var/lib/kitt-hub"
    assert one(unit, "Service", "ExecStart") == (
        "/opt/kitt-hub/venv/bin/kitt-hub run --config /etc/kitt-hub/config.toml"
    )
    env = unit["Service"]["Environment"]
    assert "KITT__HUB__STATE_DIR=/var/lib/kitt-hub" in env
    assert "KITT__WEB__TOKEN_FILE=web-token" in env
    assert one(unit, "Service", "LoadCredential") == "web-token:/etc/kitt-hub/web-token"
    assert one(unit, "Service", "UMask") == "0077"


def test_hardening(unit: Unit) -> None:
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    families = one(unit, "Service", "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_dependencies_are_optional(unit: Unit) -> None:
    wanted = {"network-online.target", "mosquitto.service", "postgresql.service"}
    assert set(one(unit, "Unit", "Wants").split()) == wanted
    assert set(one(unit, "Unit", "After").split()) == wanted
    assert "Requires" not in unit["Unit"]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def _verify(unit_text: str, folder: Path) -> list[str]:
    """Run `systemd-analyze verify` on a copy whose ExecStart points at an existing binary.

    Returns the problems: the output lines about this unit, plus the exit status when non-zero.
    """
    assert SYSTEMD_ANALYZE is not None
    true = shutil.which("true")
    assert true is not None
    text = re.sub(r"^ExecStart=/opt/kitt-hub/venv/bin/kitt-hub", f"ExecStart={true}", unit_text, flags=re.M)
    assert f"ExecStart={true} run --config" in text
    copy = folder / "kitt-hub.service"
    copy.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    problems = [line for line in lines if "kitt-hub" in line]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}: {lines}")
    return problems


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    assert _verify(UNIT.read_text(encoding="utf-8"), tmp_path) == []


@needs_systemd_analyze
def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = UNIT.read_text(encoding="utf-8").replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes")
    problems = _verify(broken, tmp_path)
    assert any("ProtectHomes" in p for p in problems), problems


@needs_systemd_analyze
def test_exposure_stays_low(tmp_path: Path) -> None:
    true = shutil.which("true")
    copy = tmp_path / "kitt-hub.service"
    copy.write_text(
        re.sub(r"^ExecStart=\S+", f"ExecStart={true}", UNIT.read_text(encoding="utf-8"), flags=re.M),
        encoding="utf-8",
    )
    assert SYSTEMD_ANALYZE is not None
    probe = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--help"], capture_output=True, text=True, timeout=30
    )
    if "--offline" not in probe.stdout:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    # --threshold is on systemd's 0–100 scale: 20 means an exposure of at most 2.0 ("OK").
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


# --- install.sh / uninstall.sh --dry-run --------------------------------------------------------------------

MUTATING_TOOLS = (
    "systemctl", "useradd", "userdel", "groupdel", "install", "ln", "rm", "chown", "chmod", "cp", "fake-python",
)


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """Paths moved under tmp_path, and every mutating tool replaced by one that logs its call and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in MUTATING_TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 97\n', encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    root = tmp_path / "root"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHON": str(bin_dir / "fake-python"),
        "KITT_INSTALL_PREFIX": str(root / "opt" / "kitt-hub"),
        "KITT_INSTALL_ETC": str(root / "etc" / "kitt-hub"),
        "KITT_INSTALL_STATE": str(root / "var" / "lib" / "kitt-hub"),
        "KITT_INSTALL_UNIT_DIR": str(root / "etc" / "systemd" / "system"),
        "KITT_INSTALL_MOSQUITTO_DIR": str(root / "etc" / "mosquitto"),
    }
    return env, root, calls


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_install_dry_run_prints_the_steps_and_touches_nothing(sandbox: tuple[dict[str, str], Path, Path]) -> None:
    env, root, calls = sandbox
    (root / "etc" / "mosquitto" / "conf.d").mkdir(parents=True)  # "Mosquitto is installed"
    before = _tree(root)
    proc = subprocess.run(
        ["bash", str(INSTALL), "--dry-run", "--extras", "otel"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    prefix, etc = env["KITT_INSTALL_PREFIX"], env["KITT_INSTALL_ETC"]
    expected_steps = [
        "dry run: nothing is changed",
        "+ useradd --system" if "kitt-hub" not in _passwd_users() else "system user kitt-hub",
        f"-m venv {prefix}/venv",
        f"+ {prefix}/venv/bin/pip install",
        f"{prefix}/models/onnx",
        f"{etc}/config.toml",
        f"{etc}/web-token",
        f"kitt-hub.service {env['KITT_INSTALL_UNIT_DIR']}/kitt-hub.service",
        f"mosquitto-kitt.conf {env['KITT_INSTALL_MOSQUITTO_DIR']}/conf.d/kitt.conf",
        "+ systemctl daemon-reload",
        "+ systemctl enable kitt-hub.service",
        "+ systemctl restart kitt-hub.service",
    ]
    for step in expected_steps:
        assert step in out, f"{step!r} not in:\n{out}"
    pip_line = next(line for line in out.splitlines() if "/venv/bin/pip install" in line)
    assert pip_line.endswith(r"\[otel\]"), pip_line  # printf %q quoting of "<repo>[otel]"
    assert out.index("daemon-reload") < out.index("enable kitt-hub")
    assert not calls.exists(), calls.read_text()
    assert _tree(root) == before


def test_uninstall_dry_run_purge_touches_nothing(sandbox: tuple[dict[str, str], Path, Path]) -> None:
    env, root, calls = sandbox
    for key in ("KITT_INSTALL_PREFIX", "KITT_INSTALL_ETC", "KITT_INSTALL_STATE"):
        Path(env[key]).mkdir(parents=True)
    (Path(env["KITT_INSTALL_ETC"]) / "web-token").write_text("secret\n")
    unit_dir = Path(env["KITT_INSTALL_UNIT_DIR"])
    unit_dir.mkdir(parents=True)
    (unit_dir / "kitt-hub.service").write_text("[Service]\n")
    before = _tree(root)
    proc = subprocess.run(
        ["bash", str(UNINSTALL), "--dry-run", "--purge"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for step in (
        "+ systemctl disable --now kitt-hub.service",
        f"+ rm -f {unit_dir}/kitt-hub.service",
        f"+ rm -rf {env['KITT_INSTALL_PREFIX']}",
        f"+ rm -rf {env['KITT_INSTALL_ETC']}",
        f"+ rm -rf {env['KITT_INSTALL_STATE']}",
    ):
        assert step in proc.stdout, f"{step!r} not in:\n{proc.stdout}"
    assert not calls.exists(), calls.read_text()
    assert _tree(root) == before


def test_uninstall_keeps_config_and_data_without_purge(sandbox: tuple[dict[str, str], Path, Path]) -> None:
    env, _root, _calls = sandbox
    for key in ("KITT_INSTALL_PREFIX", "KITT_INSTALL_ETC", "KITT_INSTALL_STATE"):
        Path(env[key]).mkdir(parents=True)
    proc = subprocess.run(["bash", str(UNINSTALL), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"+ rm -rf {env['KITT_INSTALL_PREFIX']}" in proc.stdout
    assert f"rm -rf {env['KITT_INSTALL_ETC']}" not in proc.stdout
    assert f"rm -rf {env['KITT_INSTALL_STATE']}" not in proc.stdout
    assert "userdel" not in proc.stdout


def test_scripts_refuse_to_run_for_real_without_root(sandbox: tuple[dict[str, str], Path, Path]) -> None:
    env, _root, calls = sandbox
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot run the scripts as an ordinary user")
        as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    for script in (INSTALL, UNINSTALL):
        proc = subprocess.run([*as_user, "bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "run as root" in proc.stderr
    assert not calls.exists()


def _passwd_users() -> set[str]:
    try:
        return {line.split(":", 1)[0] for line in Path("/etc/passwd").read_text().splitlines() if line}
    except OSError:
        return set()

"""Every benchmark runs in its quick mode and writes figures beside a baseline (no speed is asserted here:
the figures are the product; bench/ compares them with targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import BENCHMARKS
from tests.support.config import REPO

pytestmark = pytest.mark.bench


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_run_reports_figures_and_baseline(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    res = subprocess.run([sys.executable, "-m", "bench", name, "--quick", "--json", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == name and doc["quick"] is True
    for key in ("figures", "baseline", "ratio", "target"):
        assert doc[key], f"{name}: empty {key}"
    assert doc["git_sha"] and doc["machine"]["cpus"]

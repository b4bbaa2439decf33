"""Runs a benchmark and writes its JSON: figures, baseline, ratio, target, machine, git sha."""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

BENCHMARKS = ("startup", "spine", "embeddings", "vectors", "cache", "intents", "voice_latency", "tasks")
RESULTS_DIR = Path("bench/results")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(name: str, *, quick: bool, json_path: Path | None) -> dict[str, Any]:
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS)} or all")
    module = importlib.import_module(f"bench.{name}")
    print(f"== bench {name}{' (quick)' if quick else ''}")
    started = time.monotonic()
    result = module.run(quick)
    doc = {"benchmark": name, "quick": quick, "seconds": round(time.monotonic() - started, 2),
           "machine": machine(), "git_sha": git_sha(), **result}
    path = json_path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"   wrote {path}")
    return doc


def print_table(rows: list[tuple[str, Any, Any, Any]]) -> None:
    """rows: (figure, value, baseline, target)."""
    print(f"   {'figure':<38} {'value':>14} {'baseline':>14} {'target':>14}")
    for name, value, base, target in rows:
        print(f"   {name:<38} {value!s:>14} {base!s:>14} {target!s:>14}")

"""Intent recognition accuracy on the recognition set (tests/fixtures/intents/recognition.yaml).

KITT (Home Assistant's sentences + KITT's own + the guarded embedding fallback) side by side with the
baseline: Home Assistant's English sentences alone. A case passes when the intent and the resolved actions
(device, action, parameters) — or, for questions, the devices — are exactly what the set expects; an
``unknown`` case passes when nothing would be done. Targets: >= 95 % in-grammar, >= 85 % paraphrases,
0 actions on unknown requests.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devices.registry import Registry
from handlers.understanding.fallback import ExemplarMatcher
from handlers.understanding.pipeline import Pipeline
from handlers.understanding.recognizer import TemplateRecognizer
from hub.config import load_config
from hub.contracts import DeviceAction, Understanding

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "tests" / "fixtures" / "intents" / "recognition.yaml"
TARGETS = {"in_grammar": 0.95, "paraphrases": 0.85, "unknown_actions": 0}


def action_text(a: DeviceAction) -> str:
    return " ".join([a.device, a.action, *(f"{k}={_num(v)}" for k, v in sorted(a.params.items()))])


def _num(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def _expected(spec: str) -> str:
    head, *params = spec.split()
    return " ".join([head, params[0], *sorted(f"{k}={_num(v)}" for k, v in (p.split("=", 1) for p in params[1:]))]) \
        if params else head


def passes(group: str, case: dict[str, Any], u: Understanding) -> bool:
    got = sorted(action_text(a) for a in u.actions)
    if group == "unknown":
        return not got
    if u.intent != case["expect"] or got != sorted(_expected(s) for s in case.get("actions", [])):
        return False
    return not case.get("devices") or list(u.devices) == list(case["devices"])


@dataclass
class Report:
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    unknown_actions: int = 0
    ms_per_utterance: float = 0.0

    def accuracy(self, group: str) -> float:
        g = self.groups[group]
        return g["passed"] / g["total"] if g["total"] else 1.0


def load_cases() -> dict[str, list[dict[str, Any]]]:
    return yaml.safe_load(SET.read_text(encoding="utf-8"))


async def evaluate(pipeline: Pipeline, embedder: Any = None) -> Report:
    async def vector(text: str) -> Any:
        return None if embedder is None else await embedder.embed(text)

    report = Report()
    started, n = time.perf_counter(), 0
    for group, cases in load_cases().items():
        passed = 0
        for case in cases:
            site = case.get("site")
            u = await pipeline.understand(case["text"], area=site, vector=vector)
            n += 1
            ok = passes(group, case, u)
            passed += ok
            if group == "unknown" and u.actions:
                report.unknown_actions += 1
            if not ok:
                report.failures.append(f"{group}: {case['text']!r} → {u.intent} {[action_text(a) for a in u.actions]}"
                                       f" ({u.source})")
        report.groups[group] = {"passed": passed, "total": len(cases)}
    report.ms_per_utterance = (time.perf_counter() - started) * 1000 / max(n, 1)
    return report


async def build(*, own_sentences: bool = True, with_embeddings: bool = True) -> tuple[Pipeline, Any]:
    config = load_config(ROOT / "config.toml", {})
    registry = Registry.from_config(config.devices)
    recognizer = TemplateRecognizer(registry, extra_areas=config.voice.sites, own_sentences=own_sentences)
    recognizer.compile()
    matcher = ExemplarMatcher(registry)
    embedder = None
    model = config.resolve(config.embeddings.model)
    if with_embeddings and model.is_file():
        from hub.embeddings import Embedder

        embedder = Embedder(model_path=model, tokenizer_path=config.resolve(config.embeddings.tokenizer))
        await embedder.start()
        await embedder.wait_ready()
        matcher.load(await embedder.embed_many(matcher.texts))
    return Pipeline(registry, recognizer, matcher), embedder


async def _run() -> dict[str, Any]:
    kitt, embedder = await build()
    try:
        ours = await evaluate(kitt, embedder)
    finally:
        if embedder is not None:
            await embedder.stop()
    base_pipeline, _ = await build(own_sentences=False, with_embeddings=False)
    base = await evaluate(base_pipeline)
    rows = []
    print(f"   {'group':<12} {'KITT':>8} {'HA only':>8}   cases")
    for group in ours.groups:
        rows.append((group, ours.accuracy(group), base.accuracy(group)))
        print(f"   {group:<12} {ours.accuracy(group):>8.1%} {base.accuracy(group):>8.1%}   "
              f"{ours.groups[group]['total']}")
    print(f"   unknown requests that would act: KITT {ours.unknown_actions}, HA only {base.unknown_actions}")
    print(f"   embedding fallback: {'on' if embedder is not None else 'off (no model)'}; "
          f"{ours.ms_per_utterance:.2f} ms per utterance")
    for line in ours.failures:
        print(f"   miss  {line}")
    figures = {f"{g}_accuracy": round(a, 4) for g, a, _ in rows}
    figures |= {"unknown_actions": ours.unknown_actions, "ms_per_utterance": round(ours.ms_per_utterance, 3),
                "embedding_fallback": embedder is not None, "cases": sum(g["total"] for g in ours.groups.values())}
    baseline = {f"{g}_accuracy": round(b, 4) for g, _, b in rows} | {"unknown_actions": base.unknown_actions,
                                                                    "what": "Home Assistant English sentences only"}
    ratio = {g: round(a / b, 3) if b else None for g, a, b in rows}
    return {"figures": figures, "baseline": baseline, "ratio": ratio, "target": TARGETS,
            "failures": ours.failures}


def run(quick: bool) -> dict[str, Any]:
    return asyncio.run(_run())

"""The committed int8 model against the stored fp32 reference vectors (see models/onnx/PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hub.embeddings import Tokenizer, make_session

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "embeddings"


def test_int8_matches_fp32_reference() -> None:
    sentences = [s for s in (FIXTURES / "sentences.txt").read_text().splitlines() if s.strip()]
    reference = np.load(FIXTURES / "reference_fp32.npy").astype(np.float32)
    assert len(sentences) >= 200 and reference.shape == (len(sentences), 384)
    tok = Tokenizer(ROOT / "models" / "onnx" / "tokenizer.json")
    session = make_session(ROOT / "models" / "onnx" / "model_int8.onnx", threads=1)
    got = np.vstack([session.run(["sentence_embedding"], tok([s]))[0] for s in sentences])
    cos = np.sum(got * reference, axis=1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f}"
    assert cos.min() >= 0.97, f"min cosine {cos.min():.4f} at {sentences[int(cos.argmin())]!r}"

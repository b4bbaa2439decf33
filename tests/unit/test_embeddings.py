"""Embedder: tokenisation/padding, normalisation, micro-batching, LRU, readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hub.embeddings import Embedder, EmbeddingError, Tokenizer, normalise_text
from hub.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "onnx" / "model_int8.onnx"
TOKENIZER = ROOT / "models" / "onnx" / "tokenizer.json"


def computed(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("kitt_embeddings_computed_total") or 0.0


@pytest.fixture
async def embedder():
    metrics = Metrics()
    emb = Embedder(model_path=MODEL, tokenizer_path=TOKENIZER, threads=1, metrics=metrics, lru_size=64)
    await emb.start()
    await emb.wait_ready()
    yield emb, metrics
    await emb.stop()


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Turn ON the Kitchen light!", "turn on the kitchen light"),
        ("  what's   the\tweather\n tomorrow ?? ", "what's the weather tomorrow"),
        ("«Hello KITT.»", "hello kitt"),
        ("...", ""),
        ("set it to 21.5", "set it to 21.5"),
    ],
)
def test_normalise_text(raw: str, norm: str) -> None:
    assert normalise_text(raw) == norm


def test_tokenizer_pads_to_the_longest_not_to_128() -> None:
    tok = Tokenizer(TOKENIZER)
    feeds = tok(["hi", "turn on the kitchen light please"])
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == mask.shape == feeds["token_type_ids"].shape
    assert ids.shape[0] == 2 and ids.shape[1] < 16  # the packaged tokenizer.json would give 128
    assert mask[0].sum() == 3 and mask[1].sum() == ids.shape[1]  # [CLS] hi [SEP] + padding
    assert ids[0, 3:].tolist() == [0] * (ids.shape[1] - 3)
    assert tok(["hi"])["input_ids"].shape == (1, 3)


def test_tokenizer_truncates_at_256() -> None:
    feeds = Tokenizer(TOKENIZER)(["light " * 600])
    assert feeds["input_ids"].shape == (1, 256)


async def test_embed_is_normalised_384_float32(embedder) -> None:
    emb, _ = embedder
    vec = await emb.embed("turn on the kitchen light")
    assert vec.shape == (384,) and vec.dtype == np.float32
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    assert not vec.flags.writeable  # shared with the LRU
    assert emb.ready and emb.readiness_reason is None and emb.tag.startswith("model_int8:")


async def test_batch_companions_do_not_change_a_vector(embedder) -> None:
    # int8 dynamic quantisation shares activation scales across a padded batch: texts run one by one
    emb, _ = embedder
    alone = np.array(await emb.embed("lock the front door"))
    emb._lru.clear()
    batched = await asyncio.gather(emb.embed("lock the front door"), emb.embed("a much longer sentence " * 5))
    np.testing.assert_allclose(batched[0], alone, atol=1e-6)


async def test_padded_batches_stay_close() -> None:
    emb = Embedder(model_path=MODEL, tokenizer_path=TOKENIZER, pad_batches=True)
    async with emb:
        alone = np.array(await emb.embed("lock the front door"))
        emb._lru.clear()
        batched = await asyncio.gather(emb.embed("lock the front door"), emb.embed("open the gate"))
        assert float(alone @ batched[0]) > 0.98


async def test_concurrent_calls_make_one_model_run(embedder) -> None:
    emb, metrics = embedder
    runs = emb.runs
    texts = [f"turn on light number {i}" for i in range(10)]
    vecs = await asyncio.gather(*(emb.embed(t) for t in texts))
    assert len(vecs) == 10
    assert emb.runs == runs + 1
    assert computed(metrics) == 10


async def test_identical_concurrent_texts_are_computed_once(embedder) -> None:
    emb, metrics = embedder
    vecs = await asyncio.gather(emb.embed("Good night"), emb.embed("good night."), emb.embed("GOOD  NIGHT"))
    assert vecs[0] is vecs[1] is vecs[2]
    assert computed(metrics) == 1


async def test_one_request_computes_one_and_a_repeat_computes_none(embedder) -> None:
    emb, metrics = embedder
    await emb.embed("what's the weather like tomorrow")
    assert computed(metrics) == 1
    await emb.embed("  What's the weather like tomorrow?")
    assert computed(metrics) == 1


async def test_lru_is_bounded() -> None:
    emb = Embedder(model_path=MODEL, tokenizer_path=TOKENIZER, lru_size=2, metrics=Metrics())
    async with emb:
        for text in ("one", "two", "three"):
            await emb.embed(text)
        assert list(emb._lru) == ["two", "three"]


async def test_missing_model_reports_the_reason(tmp_path: Path) -> None:
    emb = Embedder(model_path=tmp_path / "nope.onnx", tokenizer_path=TOKENIZER)
    assert emb.readiness_reason == "embedding model not started"
    await emb.start()
    try:
        with pytest.raises(EmbeddingError):
            await emb.wait_ready()
        assert not emb.ready
        assert "failed to load" in (emb.readiness_reason or "")
        with pytest.raises(EmbeddingError):
            await emb.embed("hello")
    finally:
        await emb.stop()


async def test_embed_before_start_is_an_error() -> None:
    with pytest.raises(EmbeddingError):
        await Embedder(model_path=MODEL, tokenizer_path=TOKENIZER).embed("hi")

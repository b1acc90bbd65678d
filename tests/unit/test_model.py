"""The converted models: checked against the numpy reference, kind detection, scoring."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path

import numpy as np
import pytest

from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.model import ModelKind
from rerank.tokenization import TextTokenizer
from tests.support import TINY, default_checkpoint, tiny_weights, write_model_dir
from tools.convert import BertConfig
from tools.reference import bert_forward, cross_encoder_logits, mean_pool_normalise
from tools.verify import verify_against_reference


def test_default_model_matches_numpy_reference(default_model_dir: Path) -> None:
    assert verify_against_reference(default_checkpoint(), default_model_dir) <= 1e-4


def test_verify_rejects_a_wrong_model(tmp_path: Path, default_model_dir: Path) -> None:
    """The check can fail: a model with other weights is caught."""
    from safetensors.numpy import load_file, save_file

    from rerank.errors import ModelLoadError
    from tools.convert import convert_checkpoint

    src = default_checkpoint()
    bad = tmp_path / "bad"
    bad.mkdir()
    w = load_file(str(src / "model.safetensors"))
    w["encoder.layer.0.intermediate.dense.weight"] *= 1.05
    save_file(w, str(bad / "model.safetensors"))
    for f in ("config.json", "tokenizer.json"):
        (bad / f).write_bytes((src / f).read_bytes())
    convert_checkpoint(bad, tmp_path / "bad-onnx")
    with pytest.raises(ModelLoadError):
        verify_against_reference(src, tmp_path / "bad-onnx")


def test_default_model_is_a_bi_encoder_with_unit_vectors(engine: ScoringEngine) -> None:
    assert engine.kind is ModelKind.BI_ENCODER
    vecs = engine.model.run(engine.tokenizer.encode(["a", "a much longer sentence here"]))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


async def test_relevant_document_scores_above_unrelated(engine: ScoringEngine) -> None:
    docs = [
        "Pasta with tomato sauce is a simple Italian dinner.",
        "The lift of a wing increases when it is immersed in a propeller slipstream.",
        "The football club signed a new striker this summer.",
        "Stock markets fell sharply on Tuesday.",
    ]
    scored = await score_cold(engine, "how does a propeller slipstream affect wing lift", docs)
    assert int(np.argmax(scored.scores)) == 1
    assert scored.scores[1] > max(np.delete(scored.scores, 1)) + 0.2


def test_tokenizer_pads_to_longest_and_truncates(default_model_dir: Path) -> None:
    tok = TextTokenizer(default_model_dir / "tokenizer.json", max_length=16)
    b = tok.encode(["short", "a somewhat longer text with more words in it"])
    longest = int(b.attention_mask.sum(1).max())
    assert b.input_ids.shape == (2, longest)  # not padded to the file's fixed 128
    b2 = tok.encode(["word " * 100])
    assert b2.input_ids.shape == (1, 16)
    assert b.real_tokens < b.padded_tokens


def test_cross_encoder_detected_and_matches_reference(cross_model_dir: Path) -> None:
    eng = ScoringEngine(
        EngineConfig(model_dir=cross_model_dir, precision="fp32", max_length=64, threads=1)
    )
    try:
        assert eng.kind is ModelKind.CROSS_ENCODER
        q, docs = "wing lift", ["lift of wings", "pasta recipe", "boundary layers"]
        scored = asyncio.run(score_cold(eng, q, docs))
        batch = eng.tokenizer.encode_pairs(q, docs)
        assert batch.token_type_ids.max() == 1  # the pair really is a pair
        hidden = bert_forward(
            tiny_weights(), TINY, batch.input_ids, batch.attention_mask, batch.token_type_ids
        )
        want = cross_encoder_logits(tiny_weights(), hidden)[:, 0]
        np.testing.assert_allclose(scored.scores, want, atol=1e-4)
        assert scored.scores.shape == (3,)
    finally:
        eng.close()


def test_token_state_bi_encoder_is_pooled(tmp_path: Path) -> None:
    """An export with only ``last_hidden_state`` is a bi-encoder we mean-pool ourselves."""
    d = write_model_dir(tmp_path / "hs", "last_hidden_state")
    eng = ScoringEngine(EngineConfig(model_dir=d, precision="fp32", max_length=64, threads=1))
    try:
        assert eng.kind is ModelKind.BI_ENCODER and eng.model.plan.needs_pooling
        b = eng.tokenizer.encode(["one text", "another longer text here"])
        hidden = bert_forward(tiny_weights(), TINY, b.input_ids, b.attention_mask, b.token_type_ids)
        np.testing.assert_allclose(
            eng.model.run(b), mean_pool_normalise(hidden, b.attention_mask), atol=1e-4
        )
    finally:
        eng.close()


def test_config_round_trip(cross_model_dir: Path) -> None:
    cfg = BertConfig.from_dict(json.loads((cross_model_dir / "config.json").read_text()))
    assert cfg == TINY


async def test_scoring_does_not_block_the_event_loop(default_model_dir: Path) -> None:
    """While a long model call runs in the executor, the loop keeps ticking."""
    engine = ScoringEngine(
        EngineConfig(model_dir=default_model_dir, precision="fp32", max_length=256, threads=1)
    )
    docs = ["a fairly long document about aerodynamics and heat transfer " * 20] * 16
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    # What is measured is the scoring, not a collection of the whole test session's heap
    # (a gen-2 pass over a process that ran 500 tests stops the loop for ~60 ms).
    gc.collect()
    gc.disable()
    try:
        t = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        await score_cold(engine, "heat transfer", docs)
        elapsed = time.perf_counter() - t0
        t.cancel()
    finally:
        gc.enable()
    gaps = np.diff(ticks)
    engine.close()
    if elapsed < 0.1:
        pytest.skip(f"scoring took {elapsed:.3f}s: too fast here to show anything")
    assert len(ticks) > elapsed / 0.005 * 0.5
    assert gaps.max() < 0.05


def test_small_calls_run_on_a_one_thread_session_with_the_same_results(
    default_model_dir: Path,
) -> None:
    """Calls of up to ``small_call_tokens`` tokens go to the one-thread session (a query
    handed to a pool costs more CPU than it saves); both sessions hold the same model."""
    from rerank.model import OnnxModel

    model = OnnxModel(default_model_dir, intra_op_threads=2, precision="int8", small_call_tokens=16)
    assert model._small is not None
    tok = TextTokenizer(default_model_dir / "tokenizer.json", 128)
    used: list[str] = []
    for name in ("session", "_small"):
        session = getattr(model, name)
        real = session.run

        def spy(*args: object, _real: object = real, _name: str = name) -> object:
            used.append(_name)
            return _real(*args)  # type: ignore[operator]

        session.run = spy
    short = tok.encode(["laminar flow"])  # 4 tokens
    long = tok.encode(["boundary layer " * 10])  # over 16
    got_small = model.run(short)
    got_long = model.run(long)
    assert used == ["_small", "session"]
    pool_only = OnnxModel(default_model_dir, intra_op_threads=2, precision="int8")
    assert pool_only._small is None
    np.testing.assert_allclose(got_small, pool_only.run(short), atol=1e-5)
    np.testing.assert_allclose(got_long, pool_only.run(long), atol=1e-5)
    # One thread in all: one session is enough.
    assert OnnxModel(default_model_dir, 1, "int8", small_call_tokens=16)._small is None

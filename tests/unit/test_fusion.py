"""Score fusion, final ranking, and the text the model sees."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.fusion import fuse
from rerank.ranking import rank
from rerank.text import doc_text, prepare_query
from retrieval.types import Hit


def test_minmax_blend_normalises_both_scores() -> None:
    fused = fuse([30.0, 20.0, 10.0], [0.1, 0.9, 0.5], "minmax", weight=0.5)
    np.testing.assert_allclose(fused, [0.5, 0.75, 0.25])
    np.testing.assert_allclose(fuse([3, 2, 1], [0.1, 0.9, 0.5], "minmax", weight=1.0), [0, 1, 0.5])
    np.testing.assert_allclose(fuse([3, 2, 1], [0.1, 0.9, 0.5], "minmax", weight=0.0), [1, 0.5, 0])


def test_linear_keeps_the_retrieval_scores_relative_spread() -> None:
    # The model min-max normalised; retrieval divided by its largest, from zero.
    fused = fuse([30.0, 20.0, 10.0], [0.1, 0.9, 0.5], "linear", weight=0.5)
    np.testing.assert_allclose(fused, [0.5, 0.5 + 0.5 * 2 / 3, 0.25 + 0.5 / 3])
    # Negative retrieval scores (a function_score query) lower the floor instead.
    np.testing.assert_allclose(fuse([1.0, -1.0], [0.0, 0.0], "linear", weight=0.0), [1.0, 0.0])
    # Constant retrieval scores (a filter, match_all) leave the model's order alone.
    np.testing.assert_allclose(
        fuse([1.0, 1.0, 1.0], [0.2, 0.9, 0.4], "linear", weight=0.5), [0.5, 1.0, 0.5 + 0.5 * 2 / 7]
    )


def test_a_near_constant_retrieval_score_does_not_outvote_the_model() -> None:
    """Issue 25's case: one common word, BM25 0.207-0.252 over six documents. Min-max
    stretches that noise over [0, 1]; the default keeps it within 18%."""
    bm25 = [0.252, 0.207, 0.231, 0.219, 0.244, 0.226]
    model = [0.13, 0.83, 0.41, 0.35, 0.22, 0.30]  # document 1 is the relevant one
    assert int(np.argmax(fuse(bm25, model, "linear"))) == 1
    # BM25 alone moves a document by 0.5 * (1 - 0.207 / 0.252) at most, not by 0.5.
    retrieval_part = fuse(bm25, [0.0] * 6, "linear")
    assert np.ptp(retrieval_part) == pytest.approx(0.5 * (1 - 0.207 / 0.252))
    assert np.ptp(fuse(bm25, [0.0] * 6, "minmax")) == pytest.approx(0.5)


def test_rrf_uses_ranks_only() -> None:
    a = fuse([30.0, 20.0, 10.0], [0.1, 0.9, 0.5], "rrf", rrf_k=60)
    b = fuse([3000.0, 2.0, 1.0], [-5.0, 7.0, 0.0], "rrf", rrf_k=60)  # same orders, other scales
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, [0.5 / 61 + 0.5 / 63, 0.5 / 62 + 0.5 / 61, 0.5 / 63 + 0.5 / 62])


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse([1.0], [1.0], "nope")  # type: ignore[arg-type]


def test_rank_puts_scored_first_then_retrieval_order() -> None:
    union = [
        Hit("a", "", "", 9.0),
        Hit("b", "", "", 8.0),
        Hit("c", "", "", 7.0),
        Hit("d", "", "", 6.0),
    ]
    ranked = rank(union, {"c": 0.9, "a": 0.1}, "model")
    assert [r.candidate.doc_id for r in ranked] == ["c", "a", "b", "d"]
    assert [r.model_score for r in ranked] == [0.9, 0.1, None, None]
    assert ranked[2].score is None


def test_text_choices() -> None:
    h = Hit("x", "A title", "Some text.", 1.0)
    assert doc_text(h, "title_text") == "A title. Some text."
    assert doc_text(h, "text") == "Some text."
    assert doc_text(Hit("y", "Only title", "", 1.0), "text") == "Only title"
    assert prepare_query("what is lift  ?  .", "clean") == "what is lift"
    assert prepare_query("what is lift .", "raw") == "what is lift ."


def test_passages_cover_the_text_with_overlap(default_model_dir: Path) -> None:
    from rerank.tokenization import TextTokenizer

    tok = TextTokenizer(default_model_dir / "tokenizer.json", max_length=18)
    text = " ".join(f"word{i}" for i in range(40))
    (parts,) = tok.split_passages([text], stride=4)
    assert len(parts) > 2
    assert parts[0].startswith("word0") and parts[-1].endswith("word39")
    for p in parts:
        assert len(tok.encode([p]).input_ids[0]) <= 18
    assert tok.split_passages(["short text"], stride=4) == [["short text"]]
    # A cross-encoder's query shares the input: its windows leave room for it, so no
    # window is truncated when paired with the query.
    query = "what do the words say"
    (pair_parts,) = tok.split_passages([text], stride=4, reserve=tok.count(query) + 1)
    assert len(pair_parts) > len(parts)
    for p in pair_parts:
        assert tok.count(query) + tok.count(p) + 3 <= 18  # [CLS] q [SEP] p [SEP] fits whole


def test_best_passage_finds_relevance_past_the_first_window(default_model_dir: Path) -> None:
    filler = "Boil the pasta in salted water and stir the tomato sauce with basil. " * 4
    doc = filler + "The lift of a wing increases inside a propeller slipstream."
    query = "wing lift in a propeller slipstream"
    scores = {}
    for mode in ("first", "best"):
        eng = ScoringEngine(
            EngineConfig(
                model_dir=default_model_dir,
                precision="fp32",
                max_length=32,
                threads=1,
                passages=mode,
            )
        )
        try:
            scores[mode] = float(asyncio.run(score_cold(eng, query, [doc])).scores[0])
        finally:
            eng.close()
    assert scores["best"] > scores["first"] + 0.2

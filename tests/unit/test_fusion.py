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


def test_linear_blend_normalises_both_scores() -> None:
    fused = fuse([30.0, 20.0, 10.0], [0.1, 0.9, 0.5], "linear", weight=0.5)
    np.testing.assert_allclose(fused, [0.5, 0.75, 0.25])
    np.testing.assert_allclose(fuse([3, 2, 1], [0.1, 0.9, 0.5], "linear", weight=1.0), [0, 1, 0.5])
    np.testing.assert_allclose(fuse([3, 2, 1], [0.1, 0.9, 0.5], "linear", weight=0.0), [1, 0.5, 0])


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

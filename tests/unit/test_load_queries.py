"""profiles/workloads.py's unique queries (the workload of profiles/load.py): every query
text in a run is different (a benchmark of repeated queries measures a cache, issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

from profiles.workloads import unique_queries


def test_queries_are_unique_and_cut_from_the_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    words = [f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(400)]
    docs = [{"title": f"t{i}", "text": " ".join(words[i * 40 : i * 40 + 40])} for i in range(10)]
    corpus.write_text("\n".join(json.dumps(d) for d in docs))
    got = list(unique_queries(corpus, 1000))
    assert len(got) == len(set(got)) == 1000
    vocab = set(words) | {f"t{i}" for i in range(10)}
    assert all(3 <= len(q.split()) <= 7 and set(q.split()) <= vocab for q in got)

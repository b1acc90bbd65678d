"""The real-text vectors ``profiles/ann.py`` measures approximate kNN on: about 100,000
texts cut from what is on every machine (Cranfield's documents as titles, sentences,
overlapping sentence windows and word windows; the docstrings of the standard library and
of the installed packages, whole and by sentence), embedded by the serving engine exactly
as ``app index`` stores them (``engine_embedder``: float16, tagged), and Cranfield's 225
queries encoded by the same engine. Embedding takes minutes on 2 cores, so the vectors are
kept in ``profiles/out/`` (git-ignored) keyed by the engine's tag and the text count.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from app.config import Config
from profiles.workloads import CRANFIELD, cranfield_queries
from retrieval.corpus import _walk
from retrieval.types import Document
from retrieval.vectors import BATCH, chunked, pack, unpack

OUT = Path(__file__).resolve().parent / "out"
_SENTENCE = re.compile(r"\s\.\s|\s\.$")  # Cranfield's tokenised full stop
_PROSE_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _cranfield(dataset: Path) -> Iterator[str]:
    for line in (dataset / "corpus.jsonl").open():
        d = json.loads(line)
        yield d["title"].strip(" .")
        sents = [s.strip() for s in _SENTENCE.split(d["text"]) if len(s.split()) >= 4]
        for width in (1, 2, 3, 4):
            for i in range(max(1, len(sents) - width + 1)):
                yield " . ".join(sents[i : i + width])
        words = d["text"].split()
        for size, stride in ((24, 12), (48, 16)):
            for i in range(0, max(1, len(words) - size + 1), stride):
                yield " ".join(words[i : i + size])


def _docstrings(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        if "test" in path.name or "tests" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for doc in _walk(tree, path.stem, 80):
            yield doc.text[:1200]
            for s in _PROSE_SENTENCE.split(doc.text):
                if len(s.split()) >= 6:
                    yield s


def texts(n: int, dataset: Path = CRANFIELD) -> list[str]:
    """Up to ``n`` distinct texts, in a fixed order (Cranfield first)."""
    paths = sysconfig.get_paths()
    seen: dict[str, None] = {}
    for source in (
        _cranfield(dataset),
        _docstrings(Path(paths["stdlib"])),
        _docstrings(Path(paths["purelib"])),
    ):
        for t in source:
            if t and t not in seen:
                seen[t] = None
                if len(seen) >= n:
                    return list(seen)
    return list(seen)


def vectors(cfg: Config, n: int, dataset: Path = CRANFIELD) -> tuple[np.ndarray, np.ndarray]:
    """(documents [N, dim], queries [225, dim]) float32 as a search sees them (stored as
    float16, then unit length), embedded once and kept in ``profiles/out``."""
    from app.indexing import engine_embedder
    from app.services import open_engine
    from rerank.text import prepare_query

    engine = open_engine(cfg)
    try:
        got = engine_embedder(cfg, engine)
        if got is None:
            raise SystemExit("the configured model stores no vectors (not a bi-encoder)")
        embed, tag, _ = got
        key = hashlib.blake2b(f"{tag}:{n}".encode(), digest_size=6).hexdigest()
        cache = OUT / f"ann-vectors-{key}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return _unit(z["docs"].astype(np.float32)), _unit(z["queries"])
        corpus = texts(n, dataset)
        print(f"embedding {len(corpus)} texts (tag {tag})", flush=True)
        rows: list[np.ndarray] = []
        t0 = time.perf_counter()
        for i, batch in enumerate(chunked(corpus, BATCH)):
            vecs = embed([Document(str(j), "", t) for j, t in enumerate(batch)])
            rows.extend(unpack(pack(v)) for v in vecs)  # the stored float16 round trip
            if i % 100 == 0:
                done = len(rows)
                print(f"  {done}/{len(corpus)} in {time.perf_counter() - t0:.0f}s", flush=True)
        qs = [prepare_query(q, cfg.ranking.query_prep) for q in cranfield_queries(dataset)]
        queries = engine.embed_documents(qs).astype(np.float32)
        docs = np.stack(rows).astype(np.float16)
        OUT.mkdir(exist_ok=True)
        np.savez(cache, docs=docs, queries=queries)
        return _unit(docs.astype(np.float32)), _unit(queries)
    finally:
        engine.close()


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.ascontiguousarray(m, np.float32)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return m


__all__ = ["OUT", "texts", "vectors"]

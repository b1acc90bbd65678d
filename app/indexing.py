"""The ``index`` and ``embed`` commands: load a corpus into the configured backend, or add
this engine's index-time vectors to an index in place. Offline work, kept out of the
command line's parser (``app/cli.py``) and off the request path."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from app import diagnose
from app.config import Config
from retrieval.errors import RetrievalError
from retrieval.types import Document

if TYPE_CHECKING:
    import numpy as np

    from rerank.engine import ScoringEngine
    from retrieval.vectors import Embedder


def index(cfg: Config, dataset: Path | None, default: bool, embed: bool) -> int:
    from retrieval.corpus import stdlib_documents, write_beir_corpus
    from retrieval.embedded.layout import build_lock

    if default:
        dataset = cfg.default_corpus_dir
        # Locked before anything is written: a second run stops here, corpus untouched.
        with build_lock(dataset):
            n = write_beir_corpus(stdlib_documents(), dataset)
            print(f"default corpus: {n} standard-library docstrings -> {dataset / 'corpus.jsonl'}")
            return _index(cfg, dataset, embed)
    assert dataset is not None
    return _index(cfg, dataset, embed)


def _index(cfg: Config, dataset: Path, embed: bool) -> int:
    from retrieval.corpus import count_lines, read_beir_corpus
    from retrieval.factory import open_indexer

    total = count_lines(dataset / "corpus.jsonl") if dataset.is_dir() else count_lines(dataset)
    docs = read_beir_corpus(dataset)
    vectors = embedder(cfg) if embed else None
    embed_fn, tag, dims = vectors if vectors else (None, "", None)
    indexer = open_indexer(cfg.retrieval_config())
    try:
        n = asyncio.run(indexer.index(docs, total, embed=embed_fn, tag=tag, dims=dims))
    except RetrievalError as exc:  # e.g. a team's index where ours should be
        print(f"python -m app index: error: {diagnose.one_line(exc)}", file=sys.stderr)
        return diagnose.exit_code(exc)
    with_vectors = " with index-time vectors" if vectors else ""
    print(f"indexed {n} documents{with_vectors} into {indexer.where}")
    return 0


def embed(cfg: Config, batch: int, max_batches: int | None) -> int:
    """Add this engine's index-time vectors to an existing index, in place."""
    from retrieval.factory import open_indexer

    vectors = embedder(cfg)
    if vectors is None:
        print("embed: nothing to do without a first-passage bi-encoder model", file=sys.stderr)
        return diagnose.SETUP
    embed_fn, tag, dims = vectors
    try:
        indexer = open_indexer(cfg.retrieval_config())
        run = indexer.embed(embed_fn, tag, dims, batch=batch, max_batches=max_batches)
        report = asyncio.run(run)
    except RetrievalError as exc:
        print(f"python -m app embed: error: {diagnose.one_line(exc)}", file=sys.stderr)
        return diagnose.exit_code(exc)
    print(f"{indexer.where}: {report.summary()}")
    return 1 if report.failed else 0


def migrate(cfg: Config, replace_index: bool, embed: bool, batch: int) -> int:
    """Copy the configured (team's) index with vectors behind the same name
    (retrieval/elastic/migrate.py); Elasticsearch only."""
    from retrieval.factory import open_migrator

    try:
        migrator = open_migrator(cfg.retrieval_config())
        vectors = embedder(cfg) if embed else None
        embed_fn, tag, dims = vectors if vectors else (None, "", None)
        done = asyncio.run(migrator.migrate(replace_index, embed_fn, tag, dims, batch))
    except RetrievalError as exc:
        print(f"python -m app migrate: error: {diagnose.one_line(exc)}", file=sys.stderr)
        return diagnose.exit_code(exc)
    print(done)
    return 0


Vectors = tuple["Embedder", str, int]


def embedder(cfg: Config) -> Vectors | None:
    """The serving engine's document embedding, when the configured model can use stored
    vectors (a bi-encoder scoring first passages); None otherwise."""
    from app.services import open_engine
    from rerank.errors import ModelLoadError

    try:
        engine = open_engine(cfg)
    except ModelLoadError as exc:
        print(f"no index-time vectors: {exc}", file=sys.stderr)
        return None
    vectors = engine_embedder(cfg, engine)
    if vectors is None:
        engine.close()
    return vectors


def engine_embedder(cfg: Config, engine: ScoringEngine) -> Vectors | None:
    """``embedder`` on an engine already open (``app eval`` scores with the same one)."""
    from rerank.text import doc_text
    from retrieval.factory import vector_tag

    fields = cfg.ranking.doc_fields
    # The tag also names the source fields read (--es-title-field/--es-text-field): vectors
    # embedded from another field are not this configuration's.
    tag = vector_tag(cfg.retrieval_config(), engine.vector_tag(fields))
    if tag is None:
        print("no index-time vectors: the model is not a first-passage bi-encoder")
        return None

    def embed(batch: Sequence[Document]) -> np.ndarray:
        return engine.embed_documents([doc_text(d, fields) for d in batch])

    dims = int(embed([Document("probe", "", "probe")]).shape[1])
    return embed, tag, dims

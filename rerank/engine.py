"""The scoring engine: the one place where CPU work leaves the event loop.

It owns the ONNX Runtime session, the tokenizer, one executor and the micro-batcher that
feeds it. Tokenisation (Rust) and inference (ONNX Runtime) both release the GIL, so while
they run the loop keeps serving sockets and waiting on Elasticsearch.

Requests talk to a :class:`QueryScorer`: they submit documents as retrieval chunks arrive,
wait until everything is scored or their deadline comes, and collect what is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rerank.batcher import CallResult, ItemResult, MicroBatcher, Seq, Sink
from rerank.cache import EmbeddingCache
from rerank.cost import CostModel
from rerank.errors import ModelLoadError
from rerank.model import ModelKind, OnnxModel
from rerank.observe import EngineObserver, NullObserver
from rerank.quantize import Precision
from rerank.tokenization import TextTokenizer

Passages = Literal["first", "best"]
Future = asyncio.Future[ItemResult]


@dataclass
class StageTimes:
    """Seconds spent per stage on behalf of one request (its share of shared model calls)."""

    tokenize: float = 0.0
    infer: float = 0.0
    real_tokens: int = 0
    padded_tokens: int = 0

    def add_item(self, r: ItemResult) -> None:
        self.tokenize += r.tokenize_s
        self.infer += r.infer_s
        self.real_tokens += r.real_tokens
        self.padded_tokens += r.padded_tokens


@dataclass
class Scored:
    scores: np.ndarray  # aligned with the documents; NaN where the deadline cut it
    times: StageTimes


@dataclass(frozen=True)
class Doc:
    id: str  # how the caller names it in the results
    text: str  # what the model sees
    vector: np.ndarray | None = None  # index-time embedding, used as is (bi-encoders)
    cache_id: str = ""  # stable id for the embedding cache; "" keys on the text alone


@dataclass
class Collected:
    scores: dict[str, float] = field(default_factory=dict)
    times: StageTimes = field(default_factory=StageTimes)
    cache_hits: int = 0
    index_vectors: int = 0
    failure: BaseException | None = None


class ScoringEngine:
    def __init__(
        self,
        model_dir: Path,
        *,
        max_length: int = 256,
        threads: int = 0,
        passages: Passages = "first",
        passage_stride: int = 32,
        observer: EngineObserver | None = None,
        precision: Precision = "fp32",
        batch_tokens: int = 4096,
        cache_mb: float = 256.0,
    ) -> None:
        threads = threads or _cpu_count()
        self.model_dir = model_dir
        self.precision = precision
        self.model = OnnxModel(model_dir, intra_op_threads=threads, precision=precision)
        self.tokenizer = TextTokenizer(model_dir / "tokenizer.json", max_length)
        positions = _max_positions(model_dir)
        if positions is not None and max_length > positions:
            raise ModelLoadError(
                f"max_length {max_length} exceeds the model's {positions} positions"
            )
        self.passages = passages
        self.passage_stride = passage_stride
        self.observer: EngineObserver = observer or NullObserver()
        # Two workers: model calls (the batcher runs one at a time, and the session uses
        # every core through its intra-op pool) and light preparation such as splitting
        # passages, which must not wait behind a model call.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scoring")
        self.cost = CostModel()
        bi = self.kind is ModelKind.BI_ENCODER
        self.cache = EmbeddingCache(int(cache_mb * 2**20)) if bi and cache_mb > 0 else None
        self.batcher = MicroBatcher(
            self._call,
            self._executor,
            self.cost,
            self._estimate,
            self.observer,
            max_tokens=max(batch_tokens, max_length),
        )
        self._warm_up()

    @property
    def kind(self) -> ModelKind:
        return self.model.kind

    def vector_tag(self, doc_fields: str) -> str | None:
        """Names everything that shapes a document vector, so vectors stored at index time
        are used only by an engine that would compute the same ones. None: this engine
        cannot use stored vectors (cross-encoder, or best-passage scoring)."""
        if self.kind is not ModelKind.BI_ENCODER or self.passages != "first":
            return None
        h = hashlib.blake2b(digest_size=8)
        with self.model.path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        return f"{h.hexdigest()}:{self.precision}:{self.tokenizer.max_length}:{doc_fields}"

    def scorer(self, query: str, deadline: float | None = None) -> QueryScorer:
        """``deadline`` is a ``time.monotonic()`` instant (None: no deadline)."""
        return QueryScorer(self, query, deadline)

    async def score(self, query: str, docs: Sequence[str], deadline: float | None = None) -> Scored:
        """Every document against one query without the cache: the cold path, for
        benchmarks and tests."""
        scorer = QueryScorer(self, query, deadline, use_cache=False)
        await scorer.submit([Doc(str(i), t) for i, t in enumerate(docs)])
        await scorer.wait()
        got = scorer.collect()
        scorer.release()
        if got.failure is not None:
            raise got.failure
        out = np.array([got.scores.get(str(i), math.nan) for i in range(len(docs))], np.float32)
        return Scored(out, got.times)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """First-passage vectors [N, H] for index-time embeddings (synchronous, batch jobs)."""
        assert self.kind is ModelKind.BI_ENCODER, "only bi-encoders embed documents"
        out = self._call([(t, None) for t in texts])
        return out.outputs

    # -- executor side ---------------------------------------------------------------

    def _estimate(self, seq: Seq) -> int:
        """Tokens a text will take, before tokenising it (about 4 characters a token)."""
        text, pair = seq
        n = len(text) // 4 + 2 + (len(pair) // 4 + 1 if pair is not None else 0)
        return min(n, self.tokenizer.max_length)

    def _call(self, seqs: list[Seq]) -> CallResult:
        """One batcher call: tokenise, sort by length, run each length group padded only
        to its own longest text (fewer padding tokens than one matrix for all)."""
        t0 = time.perf_counter()
        encs = self.tokenizer.encode_seqs(seqs)
        lengths = np.array([len(e.ids) for e in encs])
        order = np.argsort(-lengths, kind="stable")
        tokenize = time.perf_counter() - t0
        infer = 0.0
        outputs: list[np.ndarray] = [np.empty(0)] * len(seqs)
        padded = np.zeros(len(seqs), dtype=np.int64)
        for group in _length_groups(lengths[order]):
            idx = order[group]
            t1 = time.perf_counter()
            batch = self.tokenizer.pad([encs[i] for i in idx])
            t2 = time.perf_counter()
            out = self.model.run(batch)
            infer += time.perf_counter() - t2
            tokenize += t2 - t1
            for row, i in enumerate(idx):
                outputs[i] = out[row]
                padded[i] = batch.input_ids.shape[1]
        return CallResult(np.stack(outputs), tokenize, infer, lengths, padded)

    def _windows(self, texts: list[str], query: str | None = None) -> list[list[str]]:
        """``query``: a cross-encoder's query, whose tokens share each window's input."""
        if self.passages == "first":
            return [[t] for t in texts]
        reserve = self.tokenizer.count(query) + 1 if query is not None else 0
        return self.tokenizer.split_passages(texts, self.passage_stride, reserve)

    def _warm_up(self) -> None:
        """First calls allocate ONNX Runtime's buffers; make them before traffic does, and
        give the cost model this machine's figures: small calls (a query) for the fixed
        cost, a full call for the cost of a token (estimated tokens against the model's own
        time, as the batcher measures)."""
        for words, n, repeat in ((4, 1, 6), (200, 8, 3)):
            seqs: list[Seq] = [(" ".join(["token"] * words), None)] * n
            self._call(seqs)
            for _ in range(repeat):
                res = self._call(seqs)
                self.cost.observe(sum(map(self._estimate, seqs)), res.tokenize_s + res.infer_s)

    async def aclose(self) -> None:
        await self.batcher.close()
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)

    def close(self) -> None:
        """Synchronous shutdown, for callers outside an event loop."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _length_groups(sorted_lengths: np.ndarray) -> list[slice]:
    """Cut lengths sorted longest first into runs whose padding stays small."""
    groups: list[slice] = []
    start = 0
    for i in range(1, len(sorted_lengths) + 1):
        if i == len(sorted_lengths):
            groups.append(slice(start, i))
            break
        head = int(sorted_lengths[start])
        if head - int(sorted_lengths[i]) > max(16, head // 5):
            groups.append(slice(start, i))
            start = i
    return groups


@dataclass
class _Pending:
    doc: Doc
    futures: list[Future]
    vectors: np.ndarray | None = None  # known without the model (cache, index)


class QueryScorer:
    """Scores documents against one query for one request, possibly over several
    submissions as retrieval chunks arrive; the query itself is encoded once."""

    def __init__(
        self, engine: ScoringEngine, query: str, deadline: float | None, use_cache: bool = True
    ) -> None:
        self._engine = engine
        self._query = query
        self.deadline = deadline
        self._use_cache = use_cache and engine.cache is not None
        self._pending: list[_Pending] = []
        self._query_future: Future | None = None

    @property
    def bi(self) -> bool:
        return self._engine.kind is ModelKind.BI_ENCODER

    async def submit(self, docs: Sequence[Doc]) -> None:
        if not docs:
            return
        eng = self._engine
        todo: list[Doc] = []
        for doc in docs:
            known = self._known(doc)
            if known is not None:
                self._pending.append(_Pending(doc, [], known))
            else:
                todo.append(doc)
        if self.bi and self._query_future is None and (todo or self._pending):
            # Queued first, so within this request's deadline it is computed first.
            (self._query_future,) = eng.batcher.submit(
                [(self._query, None)], self.deadline, group=self
            )
        if not todo:
            return
        texts = [d.text for d in todo]
        if eng.passages == "first":
            windows = eng._windows(texts)
        else:  # tokenises every text: off the loop
            loop = asyncio.get_running_loop()
            query = None if self.bi else self._query
            windows = await loop.run_in_executor(eng._executor, eng._windows, texts, query)
        seqs: list[Seq] = [(w, None) if self.bi else (self._query, w) for ws in windows for w in ws]
        sinks: list[Sink | None] | None = None
        if self._use_cache:
            # Document vectors outlive the request: whatever finishes, even after the
            # request answered, fills the cache.
            sinks = [s for d, ws in zip(todo, windows, strict=True) for s in _sinks(eng, d, ws)]
        futures = eng.batcher.submit(seqs, self.deadline, group=self, sinks=sinks)
        at = 0
        for doc, ws in zip(todo, windows, strict=True):
            self._pending.append(_Pending(doc, futures[at : at + len(ws)]))
            at += len(ws)

    def _known(self, doc: Doc) -> np.ndarray | None:
        if not self.bi:
            return None
        eng = self._engine
        if doc.vector is not None and eng.passages == "first":
            return np.asarray(doc.vector, dtype=np.float32).reshape(1, -1)
        if self._use_cache:
            assert eng.cache is not None
            return eng.cache.get(doc.cache_id, doc.text)
        return None

    def _futures(self) -> list[Future]:
        futs = [f for p in self._pending for f in p.futures]
        if self._query_future is not None:
            futs.append(self._query_future)
        return futs

    async def wait(self) -> None:
        """Until everything submitted is done, or the deadline."""
        futs = [f for f in self._futures() if not f.done()]
        if not futs:
            return
        timeout = None
        if self.deadline is not None:
            timeout = max(0.0, self.deadline - time.monotonic())
        await asyncio.wait(futs, timeout=timeout)

    def collect(self) -> Collected:
        got = Collected()
        qvec: np.ndarray | None = None
        if self._query_future is not None and self._ok(self._query_future, got):
            res = self._query_future.result()
            qvec = res.output
            got.times.add_item(res)
        for p in self._pending:
            if p.vectors is not None:
                if p.doc.vector is not None:
                    got.index_vectors += 1
                else:
                    got.cache_hits += 1
                if qvec is not None:
                    got.scores[p.doc.id] = float(np.max(p.vectors @ qvec))
                continue
            if not all(self._ok(f, got) for f in p.futures):
                continue
            results = [f.result() for f in p.futures]
            for r in results:
                got.times.add_item(r)
            if self.bi:
                if qvec is not None:
                    vecs = np.stack([r.output for r in results])
                    got.scores[p.doc.id] = float(np.max(vecs @ qvec))
            else:
                got.scores[p.doc.id] = float(max(float(r.output) for r in results))
        if self._use_cache:
            self._engine.observer.cache(hits=got.cache_hits, misses=self._misses())
        return got

    def _misses(self) -> int:
        return sum(1 for p in self._pending if p.vectors is None)

    @staticmethod
    def _ok(f: Future, got: Collected) -> bool:
        if not f.done() or f.cancelled():
            return False
        exc = f.exception()
        if exc is not None:
            got.failure = got.failure or exc
            return False
        return True

    def release(self) -> None:
        """The request is answering: it stops waiting for its queued work (document
        embeddings still fill the cache, in the batcher's backfill)."""
        for f in self._futures():
            f.cancel()

    def relevance(self, score: float) -> float:
        """A score on the 0..1-ish scale rerank-API clients expect: sigmoid of a
        cross-encoder logit, cosine as is for bi-encoders."""
        if self._engine.kind is ModelKind.CROSS_ENCODER:
            return 0.5 * (1.0 + math.tanh(0.5 * score))  # sigmoid without overflow
        return score


def _sinks(engine: ScoringEngine, doc: Doc, windows: list[str]) -> list[Sink | None]:
    """One sink per passage window; the last to arrive puts the document in the cache."""
    got: list[np.ndarray | None] = [None] * len(windows)

    def sink_for(k: int) -> Sink:
        def sink(vec: np.ndarray) -> None:
            got[k] = vec
            done = [v for v in got if v is not None]
            if len(done) == len(got):
                assert engine.cache is not None
                engine.cache.put(doc.cache_id, doc.text, np.stack(done))

        return sink

    return [sink_for(k) for k in range(len(windows))]


def _max_positions(model_dir: Path) -> int | None:
    import json

    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = raw.get("max_position_embeddings") if isinstance(raw, dict) else None
    return int(value) if isinstance(value, int) else None


def _cpu_count() -> int:
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


__all__ = ["Collected", "Doc", "QueryScorer", "Scored", "ScoringEngine", "StageTimes"]

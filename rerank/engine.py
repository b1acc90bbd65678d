"""The scoring engine: the one place where CPU work leaves the event loop, at the bottom
of rerank/ (it imports no request-level module).

It owns the model (``rerank.model.Model``: an ONNX Runtime session unless one is handed
in), the tokenizer, one executor, the micro-batcher that feeds it and the caches.
Tokenisation (Rust) and inference (ONNX Runtime) both release the GIL, so while they run
the loop keeps serving sockets and waiting on Elasticsearch.

It knows nothing of requests: a request talks to a :class:`rerank.scorer.QueryScorer`
(``QueryScorer(engine, query, deadline)``), which uses the engine through the small
``EngineView`` it needs, submits documents as retrieval chunks arrive, waits until
everything is scored or the deadline comes, and collects what is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rerank.batcher import MicroBatcher
from rerank.cache import EmbeddingCache, PairCache
from rerank.config import BatchingConfig, EngineConfig
from rerank.cost import CostModel
from rerank.errors import ModelLoadError
from rerank.model import Model, ModelKind, OnnxModel
from rerank.observe import EngineObserver, NullObserver
from rerank.tokenization import TextTokenizer
from rerank.types import CallResult, Seq


class ScoringEngine:
    def __init__(
        self,
        config: EngineConfig,
        batching: BatchingConfig | None = None,
        *,
        observer: EngineObserver | None = None,
        model: Model | None = None,
    ) -> None:
        """``config.model_dir`` must be set (``Config.engine_config()`` resolves it): the
        tokenizer and, unless ``model`` is given (a test's fake), the ONNX model load from
        it."""
        if config.model_dir is None:
            raise ModelLoadError("no model directory configured")
        batching = batching or BatchingConfig()
        self.config = config
        model_dir = config.model_dir
        threads = config.threads or _cpu_count()
        self.model_dir = model_dir
        self.precision = config.precision
        self.model: Model = (
            model
            if model is not None
            else OnnxModel(
                model_dir,
                intra_op_threads=threads,
                precision=config.precision,
                spinning=config.spinning,
                small_call_tokens=config.small_call_tokens,
            )
        )
        self.tokenizer = TextTokenizer(model_dir / "tokenizer.json", config.max_length)
        positions = _max_positions(model_dir)
        if positions is not None and config.max_length > positions:
            raise ModelLoadError(
                f"max_length {config.max_length} exceeds the model's {positions} positions"
            )
        self.passages = config.passages
        self.passage_stride = config.passage_stride
        self.observer: EngineObserver = observer or NullObserver()
        # Two workers: model calls (the batcher runs one at a time, and the session uses
        # every core through its intra-op pool) and light preparation such as splitting
        # passages, which must not wait behind a model call.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="scoring")
        self.cost = CostModel()
        bi = self.kind is ModelKind.BI_ENCODER
        cache_bytes = int(config.cache_mb * 2**20) if config.cache_mb > 0 else 0
        self._digest: str | None = None
        self.cache: EmbeddingCache | None = None
        self.pair_cache: PairCache | None = None
        if cache_bytes and bi:
            self.cache = EmbeddingCache(cache_bytes, self._evicted("embedding"))
        elif cache_bytes:
            tag = f"{self.model_digest()}:{self.precision}:{config.max_length}:{self.passages}"
            tag += f":{self.passage_stride}" if self.passages != "first" else ""
            self.pair_cache = PairCache(cache_bytes, tag, self._evicted("pair"))
        # A call must hold at least one whole text.
        tokens = max(batching.batch_tokens, config.max_length)
        self.batcher = MicroBatcher(
            self._call,
            self._executor,
            self.cost,
            self._estimate,
            self.observer,
            dataclasses.replace(batching, batch_tokens=tokens),
        )
        self._warm_up()
        # Set by warm_up(): the serving shapes have run where serving runs them (/readyz).
        self.ready = False

    @property
    def kind(self) -> ModelKind:
        return self.model.kind

    def vector_tag(self, doc_fields: str) -> str | None:
        """Names everything that shapes a document vector, so vectors stored at index time
        are used only by an engine that would compute the same ones. None: this engine
        cannot use stored vectors (cross-encoder, or best-passage scoring)."""
        if self.kind is not ModelKind.BI_ENCODER or self.passages != "first":
            return None
        return f"{self.model_digest()}:{self.precision}:{self.tokenizer.max_length}:{doc_fields}"

    def model_digest(self) -> str:
        """A digest of the served model file (read once)."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=8)
            with self.model.path.open("rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            self._digest = h.hexdigest()
        return self._digest

    def _evicted(self, cache: str) -> Callable[[int], None]:
        return lambda count: self.observer.cache_evicted(cache=cache, count=count)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """First-passage vectors [N, H] for index-time embeddings (synchronous, batch jobs)."""
        assert self.kind is ModelKind.BI_ENCODER, "only bi-encoders embed documents"
        return self._call([(t, None) for t in texts]).outputs

    def windows(self, texts: list[str], query: str | None = None) -> list[list[str]]:
        """The passages of each text the model scores (one, unless best-passage scoring).
        ``query``: a cross-encoder's query, whose tokens share each window's input."""
        if self.passages == "first":
            return [[t] for t in texts]
        reserve = self.tokenizer.count(query) + 1 if query is not None else 0
        return self.tokenizer.split_passages(texts, self.passage_stride, reserve)

    async def windows_async(self, texts: list[str], query: str | None = None) -> list[list[str]]:
        """:meth:`windows` off the loop when it has to tokenise (best-passage scoring)."""
        if self.passages == "first":
            return self.windows(texts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.windows, texts, query)

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

    async def warm_up(self, candidates: int) -> None:
        """Run the shapes the service serves, the way it serves them, then set ``ready``.

        The constructor's warm-up runs on the caller's thread and never through the batcher;
        traffic then paid the rest on its first requests (seen: the first ``/v1/rerank`` of 3
        short documents unscored on most fresh starts). Executor threads start lazily and
        each allocates its own kernel buffers on its first call, per shape; so both threads
        run a call here, then the batcher runs a lone query, a short rerank and a full
        candidate batch at max length (``candidates`` documents and the query), enough
        times for the cost model to learn them from the times it will see in serving.
        """
        loop = asyncio.get_running_loop()
        both = threading.Barrier(2)
        short = self._warm_seqs(1, 4)

        def on_each_thread() -> None:
            both.wait(timeout=60)  # holds this thread, so the executor starts the other
            self._call(short)

        await asyncio.gather(
            *(loop.run_in_executor(self._executor, on_each_thread) for _ in range(2))
        )
        full = self._warm_seqs(candidates + 1, self.tokenizer.max_length)
        for seqs, repeat in ((short, 8), (self._warm_seqs(4, 12), 4), (full, 2)):
            for _ in range(repeat):
                await asyncio.gather(*self.batcher.submit(seqs, None))
        self.ready = True

    def _warm_seqs(self, n: int, words: int) -> list[Seq]:
        text = " ".join(["token"] * words)  # one token a word
        if self.kind is ModelKind.CROSS_ENCODER:
            return [("token token token", text)] * n
        return [(text, None)] * n

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


def _max_positions(model_dir: Path) -> int | None:
    path = model_dir / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # present but unreadable: say so, do not guess
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    value = raw.get("max_position_embeddings") if isinstance(raw, dict) else None
    return int(value) if isinstance(value, int) else None


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


__all__ = ["ScoringEngine"]

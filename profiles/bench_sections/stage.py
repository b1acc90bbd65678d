"""bench.py section ``stage``: the ranking stage (tokenize + infer + fuse) for one query + 20
candidates, cold and warm, fp32 and int8, per max length; and a plain default
``onnxruntime.InferenceSession`` on the same unfused export."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from app.config import Config
from profiles.bench_sections.common import LENGTHS, Workload
from profiles.loadgen import stats_ms
from rerank.cold import score_cold
from rerank.config import EngineConfig
from rerank.engine import ScoringEngine
from rerank.fusion import fuse
from rerank.scorer import QueryScorer
from rerank.text import doc_text
from rerank.types import Precision
from retrieval.types import Hit

PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")


def bench_stage(cfg: Config, wl: Workload, repeats: int) -> dict[str, Any]:
    """Per max length: the engine cold (every document through the model, no cache) and warm
    (document vectors cached: only the query runs), per precision; and a plain default
    ``InferenceSession`` on the same unfused fp32 export."""
    import onnxruntime as ort

    from rerank.types import Doc

    res: dict[str, Any] = {}
    model_dir = cfg.resolved_model_dir
    for length in LENGTHS:
        entry: dict[str, Any] = {}
        for precision in PRECISIONS:
            eng = ScoringEngine(
                EngineConfig(
                    model_dir=model_dir,
                    max_length=length,
                    threads=cfg.engine.threads,
                    precision=precision,
                )
            )

            async def cold_one(q: str, hits: list[Hit], eng: ScoringEngine = eng) -> float:
                t0 = time.perf_counter()
                scored = await score_cold(eng, q, [doc_text(h) for h in hits])
                fuse([h.score for h in hits], scored.scores.tolist(), "linear")
                return time.perf_counter() - t0

            async def warm_one(q: str, hits: list[Hit], eng: ScoringEngine = eng) -> float:
                t0 = time.perf_counter()
                s = QueryScorer(eng, q)
                await s.submit([Doc(h.doc_id, doc_text(h), cache_id=h.doc_id) for h in hits])
                await s.wait()
                got = s.collect()
                fuse([h.score for h in hits], [got.scores[h.doc_id] for h in hits], "linear")
                return time.perf_counter() - t0

            async def run(
                cold_one: Callable[..., Any] = cold_one, warm_one: Callable[..., Any] = warm_one
            ) -> tuple[list[float], list[float]]:
                pairs = list(zip(wl.queries, wl.candidates, strict=True))
                cold = [await cold_one(q, h) for _ in range(repeats) for q, h in pairs]
                for q, h in pairs:  # prime the cache
                    await warm_one(q, h)
                warm = [await warm_one(q, h) for _ in range(repeats) for q, h in pairs]
                return cold, warm

            cold, warm = asyncio.run(run())
            eng.close()
            entry[precision] = {"cold": stats_ms(cold), "warm": stats_ms(warm)}
        # A plain default session on the same (unfused) export, same tokenisation.
        plain = ort.InferenceSession(
            str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        from rerank.tokenization import TextTokenizer

        tok = TextTokenizer(model_dir / "tokenizer.json", length)
        plain_t = []
        for q, hits in zip(wl.queries, wl.candidates, strict=True):
            t0 = time.perf_counter()
            b = tok.encode([q] + [doc_text(h) for h in hits])
            (v,) = plain.run(
                None,
                {
                    "input_ids": b.input_ids,
                    "attention_mask": b.attention_mask,
                    "token_type_ids": b.token_type_ids,
                },
            )
            fuse([h.score for h in hits], v[1:] @ v[0], "linear")
            plain_t.append(time.perf_counter() - t0)
        entry["plain_ort_fp32"] = stats_ms(plain_t)
        res[str(length)] = entry
    return res

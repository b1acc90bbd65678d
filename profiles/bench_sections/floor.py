"""bench.py section ``floor``: the model's FLOPs for the workload over this machine's
measured GEMM rates (numpy fp32; ONNX Runtime u8 x s8 MatMulInteger for int8)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.config import Config
from profiles.bench_sections.common import LENGTHS, Workload
from rerank.text import doc_text


def gemm_gflops(seconds: float = 2.0) -> float:
    a = np.random.default_rng(0).standard_normal((1024, 384), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((384, 1536), dtype=np.float32)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024 * 384 * 1536 * n / (time.perf_counter() - t0) / 1e9


def model_flops(cfg_json: dict[str, Any], lengths: Sequence[int]) -> float:
    """Dense FLOPs of a BERT encoder over sequences of the given (padded) lengths."""
    h, i, n = cfg_json["hidden_size"], cfg_json["intermediate_size"], cfg_json["num_hidden_layers"]
    per_token = 2 * n * (4 * h * h + 2 * h * i)
    attn = sum(2 * n * 2 * s * s * h for s in lengths)
    return float(per_token * sum(lengths) + attn)


def int8_gemm_gops(threads: int, seconds: float = 2.0) -> float:
    """u8 x s8 -> s32 GEMM rate of ONNX Runtime's MatMulInteger (the kernel int8 models use)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = 1024, 384, 1536
    w = numpy_helper.from_array(
        np.random.default_rng(1).integers(-127, 127, (k, n), dtype=np.int8), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).integers(0, 255, (m, k), dtype=np.uint8)
    sess.run(None, {"a": a})
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"a": a})
        count += 1
    _ = onnx  # imported for the helper types
    return 2 * m * k * n * count / (time.perf_counter() - t0) / 1e9


def bench_floor(cfg: Config, wl: Workload, stage: dict[str, Any], threads: int) -> dict[str, Any]:
    """FLOPs of the workload (query + 20 candidates) over this machine's measured GEMM rates:
    on the padded matrix the engine computes, and on real tokens only."""
    from rerank.tokenization import TextTokenizer

    rates = {"fp32": gemm_gflops(), "int8": int8_gemm_gops(threads)}
    cfg_json = json.loads((cfg.resolved_model_dir / "config.json").read_text())
    out: dict[str, Any] = {
        "numpy_fp32_gemm_gflops": round(rates["fp32"], 1),
        "ort_int8_gemm_gops": round(rates["int8"], 1),
    }
    for length in LENGTHS:
        tok = TextTokenizer(cfg.resolved_model_dir / "tokenizer.json", length)
        padded, real = [], []
        for q, hits in zip(wl.queries, wl.candidates, strict=True):
            b = tok.encode([q] + [doc_text(h) for h in hits])
            padded.append(model_flops(cfg_json, [b.input_ids.shape[1]] * b.input_ids.shape[0]))
            real.append(model_flops(cfg_json, [int(x) for x in b.attention_mask.sum(1)]))
        entry: dict[str, Any] = {
            "median_gflop_padded": round(statistics.median(padded) / 1e9, 2),
            "median_gflop_real": round(statistics.median(real) / 1e9, 2),
        }
        for precision, rate in rates.items():
            floor_ms = statistics.median(real) / (rate * 1e9) * 1000
            entry[f"{precision}_floor_ms"] = round(floor_ms, 3)
            got = stage.get(str(length), {}).get(precision)
            if got:
                entry[f"{precision}_engine_x_floor"] = round(got["cold"]["median"] / floor_ms, 2)
        out[str(length)] = entry
    return out

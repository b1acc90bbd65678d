"""tools/fuse.py: the rewrites before int8 quantisation keep the model's outputs and reach the
kernels they are meant to (MultiHeadAttention, LayerNormalization without
SkipLayerNormalization)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tests.support import TINY, tiny_weights
from tools.convert import build_bert_onnx
from tools.fuse import fuse_attention, sum_residuals


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _feed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 5000, size=(3, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, 4:] = 0  # padding must stay masked inside the fused attention
    mask[2, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_fused_graph_gives_the_same_outputs() -> None:
    for head in ("sentence_embedding", "last_hidden_state", "logits"):
        before = build_bert_onnx(tiny_weights(), TINY, head)
        after = build_bert_onnx(tiny_weights(), TINY, head)
        assert fuse_attention(after) == TINY.num_hidden_layers
        assert sum_residuals(after) == 2 * TINY.num_hidden_layers + 1
        ops = _ops(after)
        assert ops["Attention"] == TINY.num_hidden_layers and ops["Softmax"] == 0
        assert ops["Transpose"] == 0 and ops["Sum"] == 2 * TINY.num_hidden_layers + 1
        onnx.checker.check_model(after)
        feed = _feed()
        np.testing.assert_allclose(_run(after, feed), _run(before, feed), atol=1e-5)


def test_a_graph_that_does_not_match_is_left_alone() -> None:
    model = build_bert_onnx(tiny_weights(), TINY, "sentence_embedding")
    original = model.SerializeToString()
    # The additive mask does not come from an input of that name: no Attention node.
    assert fuse_attention(model, mask_input="no_such_input") == 0
    assert model.SerializeToString() == original


def test_quantised_default_model_runs_fused_attention_per_token_int8_and_plain_layer_norm(
    default_model_dir: Path, tmp_path: Path
) -> None:
    """What ONNX Runtime actually runs after its own graph optimisation."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(
        str(default_model_dir / "model.int8.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    ops = _ops(onnx.load(str(tmp_path / "optimised.onnx")))
    # Attention scores in one fused kernel each; every product with a weight in int8 with
    # per-token scales (tools/rowquant.py), none with one scale per call.
    assert ops["MultiHeadAttention"] == 6 and ops["SkipLayerNormalization"] == 0
    assert ops["MatMulIntegerToFloat"] == 24 and ops["QuantizeLinear"] == 24
    assert ops["DynamicQuantizeMatMul"] == ops["DynamicQuantizeLinear"] == ops["QAttention"] == 0
    assert ops["MatMul"] == 0 and ops["Softmax"] == 0
    assert ops["LayerNormalization"] == 13

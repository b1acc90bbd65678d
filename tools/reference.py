"""A plain numpy forward pass of BERT + mean pooling.

It shares no code with the ONNX graph builder on purpose: it is the independent reference
the converted model is checked against (``python -m app model`` and the tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from tools.convert import BertConfig, normalise_keys


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _erf(x: np.ndarray) -> np.ndarray:
    # math.erf is exact; vectorise it rather than approximate.
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def bert_forward(
    weights: Mapping[str, np.ndarray],
    cfg: BertConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray,
) -> np.ndarray:
    """Last hidden state [B, S, H], computed in float64."""
    w = {k: v.astype(np.float64) for k, v in normalise_keys(weights).items()}
    bsz, seq = input_ids.shape
    nh = cfg.num_attention_heads
    dh = cfg.hidden_size // nh
    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][np.arange(seq)][None]
        + w["embeddings.token_type_embeddings.weight"][token_type_ids]
    )
    x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.layer_norm_eps)
    mask_bias = (1.0 - attention_mask[:, None, None, :].astype(np.float64)) * -10000.0
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."

        def lin(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(bsz, seq, nh, dh).transpose(0, 2, 1, 3)

        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + mask_bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(bsz, seq, cfg.hidden_size)
        x = _ln(
            lin(ctx, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            cfg.layer_norm_eps,
        )
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = _ln(
            lin(h, "output.dense") + x,
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
            cfg.layer_norm_eps,
        )
    return x


def mean_pool_normalise(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    m = attention_mask[..., None].astype(hidden.dtype)
    mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def cross_encoder_logits(weights: Mapping[str, np.ndarray], hidden: np.ndarray) -> np.ndarray:
    w = {k: v.astype(np.float64) for k, v in normalise_keys(weights).items()}
    pooled = np.tanh(hidden[:, 0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
    return pooled @ w["classifier.weight"].T + w["classifier.bias"]

"""Check a converted model against the independent numpy forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from rerank.errors import ModelLoadError
from rerank.model import OnnxModel
from rerank.tokenization import TextTokenizer
from tools.convert import BertConfig
from tools.reference import bert_forward, mean_pool_normalise

PROBES = [
    "How do swept wings change the lift distribution at high angles of attack?",
    "Return a new sorted list from the items in iterable.",
    "short",
]
TOLERANCE = 1e-4


def verify_against_reference(source: Path, model_dir: Path) -> float:
    """Max absolute difference of sentence embeddings; raises past ``TOLERANCE``."""
    cfg = BertConfig.from_dict(json.loads((source / "config.json").read_text()))
    weights = load_file(str(source / "model.safetensors"))
    batch = TextTokenizer(model_dir / "tokenizer.json", 128).encode(PROBES)
    got = OnnxModel(model_dir, intra_op_threads=1, precision="fp32").run(batch)
    hidden = bert_forward(weights, cfg, batch.input_ids, batch.attention_mask, batch.token_type_ids)
    want = mean_pool_normalise(hidden, batch.attention_mask)
    diff = float(np.abs(got - want).max())
    if not diff <= TOLERANCE:
        raise ModelLoadError(f"converted model differs from the reference by {diff:.2e}")
    return diff

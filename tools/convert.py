"""Build an ONNX BERT graph straight from safetensors weights, without torch.

Torch is a 700 MB dependency we only want for benchmarks, and the BERT encoder is small
enough to write down op by op. The graph uses opset 17 standard ops (``LayerNormalization``
included) so ONNX Runtime's own graph optimiser can fuse LayerNorm/GELU/attention patterns.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rerank.errors import ModelLoadError

Head = Literal["sentence_embedding", "last_hidden_state", "logits"]
OPSET = 17


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float = 1e-12
    num_labels: int = 1

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> BertConfig:
        if raw.get("model_type", "bert") != "bert":
            raise ModelLoadError(
                f"only BERT checkpoints can be converted, not {raw['model_type']!r}"
            )
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ModelLoadError(f"unsupported activation {raw['hidden_act']!r}")
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**fields)  # type: ignore[arg-type]


def normalise_keys(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF checkpoints prefix the encoder with ``bert.`` when a head sits on top; drop it."""
    return {k.removeprefix("bert."): v for k, v in weights.items()}


class _Graph:
    """Tiny builder that keeps node/initializer bookkeeping out of the model code."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, hint: str) -> str:
        # HF Linear stores [out, in]; MatMul wants [in, out].
        wt = self.const(f"{hint}.w", np.ascontiguousarray(w.T.astype(np.float32)))
        bt = self.const(f"{hint}.b", b.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, wt], hint), bt], hint)

    def layer_norm(self, x: str, w: np.ndarray, b: np.ndarray, eps: float, hint: str) -> str:
        scale = self.const(f"{hint}.gamma", w.astype(np.float32))
        bias = self.const(f"{hint}.beta", b.astype(np.float32))
        return self.op("LayerNormalization", [x, scale, bias], hint, axis=-1, epsilon=eps)


def build_bert_onnx(
    weights: Mapping[str, np.ndarray], cfg: BertConfig, head: Head
) -> onnx.ModelProto:
    w = normalise_keys(weights)
    g = _Graph()
    nh = cfg.num_attention_heads
    dh = cfg.hidden_size // nh

    # Embeddings: word + position + token type, then LayerNorm.
    word = g.op(
        "Gather", [g.const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"]
    )
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("one", np.array(1))], axis=0)
    positions = g.op("Range", [g.const("zero", np.array(0)), seq_len, g.const("step", np.array(1))])
    pos = g.op(
        "Gather", [g.const("pos_emb", w["embeddings.position_embeddings.weight"]), positions]
    )
    typ = g.op(
        "Gather",
        [g.const("type_emb", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"],
    )
    x = g.op("Add", [g.op("Add", [word, pos]), typ])
    x = g.layer_norm(
        x,
        w["embeddings.LayerNorm.weight"],
        w["embeddings.LayerNorm.bias"],
        cfg.layer_norm_eps,
        "emb_ln",
    )

    # Additive attention mask [B, 1, 1, S]: 0 for tokens, -10000 for padding (as HF BERT did).
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inv = g.op("Sub", [g.const("one_f", np.array(1.0, np.float32)), mask_f])
    bias = g.op("Mul", [inv, g.const("neg", np.array(-10000.0, np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const("ax12", np.array([1, 2]))])

    split_shape = g.const("split_shape", np.array([0, 0, nh, dh]))
    merge_shape = g.const("merge_shape", np.array([0, 0, cfg.hidden_size]))
    scale = g.const("scale", np.array(1.0 / math.sqrt(dh), np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    one = g.const("one_g", np.array(1.0, np.float32))

    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        heads = {}
        for part in ("query", "key", "value"):
            lin = g.linear(
                x,
                w[p + f"attention.self.{part}.weight"],
                w[p + f"attention.self.{part}.bias"],
                f"l{i}.{part}",
            )
            heads[part] = g.op("Reshape", [lin, split_shape])
        q = g.op("Transpose", [heads["query"]], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [heads["key"]], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [heads["value"]], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape])
        attn = g.linear(
            ctx,
            w[p + "attention.output.dense.weight"],
            w[p + "attention.output.dense.bias"],
            f"l{i}.attn_out",
        )
        x = g.layer_norm(
            g.op("Add", [attn, x]),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            cfg.layer_norm_eps,
            f"l{i}.attn_ln",
        )
        inter = g.linear(
            x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], f"l{i}.inter"
        )
        # Exact (erf) GELU, the form BERT was trained with.
        erf = g.op("Erf", [g.op("Div", [inter, sqrt2])])
        gelu = g.op("Mul", [g.op("Mul", [inter, half]), g.op("Add", [erf, one])])
        out = g.linear(gelu, w[p + "output.dense.weight"], w[p + "output.dense.bias"], f"l{i}.out")
        x = g.layer_norm(
            g.op("Add", [out, x]),
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
            cfg.layer_norm_eps,
            f"l{i}.out_ln",
        )

    outputs: list[onnx.ValueInfoProto]
    if head == "last_hidden_state":
        g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
        outputs = [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", cfg.hidden_size]
            )
        ]
    elif head == "sentence_embedding":
        # Mean over real tokens, then L2-normalise: cosine becomes a dot product downstream.
        m = g.op("Unsqueeze", [mask_f, g.const("ax2", np.array([2]))])
        summed = g.op("ReduceSum", [g.op("Mul", [x, m]), g.const("ax1", np.array([1]))], keepdims=0)
        count = g.op("ReduceSum", [m, g.const("ax1b", np.array([1]))], keepdims=0)
        count = g.op("Max", [count, g.const("eps9", np.array(1e-9, np.float32))])
        mean = g.op("Div", [summed, count])
        norm = g.op("ReduceL2", [mean], axes=[1], keepdims=1)
        norm = g.op("Max", [norm, g.const("eps12", np.array(1e-12, np.float32))])
        g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"]))
        outputs = [
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch", cfg.hidden_size]
            )
        ]
    else:
        # BertForSequenceClassification: tanh pooler on [CLS], then the classifier.
        cls = g.op("Gather", [x, g.const("zero_i", np.array(0))], axis=1)
        pooled = g.op(
            "Tanh", [g.linear(cls, w["pooler.dense.weight"], w["pooler.dense.bias"], "pooler")]
        )
        logits = g.linear(pooled, w["classifier.weight"], w["classifier.bias"], "classifier")
        g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
        outputs = [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.num_labels])
        ]

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(g.nodes, "bert", inputs, outputs, g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rerank-service"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def convert_checkpoint(src: Path, dst: Path, head: Head = "sentence_embedding") -> Path:
    """Turn an HF checkpoint dir (config.json, model.safetensors, tokenizer.json) into a
    model dir the engine loads (model.onnx, tokenizer.json, config.json)."""
    from safetensors.numpy import load_file

    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (src / needed).is_file():
            raise ModelLoadError(f"{src} has no {needed}")
    raw_cfg = json.loads((src / "config.json").read_text())
    cfg = BertConfig.from_dict(raw_cfg)
    model = build_bert_onnx(load_file(str(src / "model.safetensors")), cfg, head)
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / "model.onnx.tmp"
    onnx.save_model(model, str(tmp))
    tmp.replace(dst / "model.onnx")
    if src.resolve() != dst.resolve():  # converting in place keeps the checkpoint's files
        shutil.copyfile(src / "tokenizer.json", dst / "tokenizer.json")
        (dst / "config.json").write_text(json.dumps(raw_cfg, indent=2))
    return dst

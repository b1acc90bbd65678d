"""Load a model directory (``model.onnx``, ``tokenizer.json``, ``config.json``) and find out
what kind of model it is from the ONNX outputs, so users can drop in their own HF export.

``Model`` is what the engine runs: ``OnnxModel`` in the service, a fake in engine tests."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from rerank.errors import InferenceError, ModelLoadError
from rerank.tokenization import Batch
from rerank.types import Precision

FILES: dict[Precision, str] = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def model_file(model_dir: Path, precision: Precision) -> Path:
    return model_dir / FILES[precision]


class ModelKind(StrEnum):
    BI_ENCODER = "bi-encoder"
    CROSS_ENCODER = "cross-encoder"


class Model(Protocol):
    """The engine's model seam: a padded batch in, one output row per input out."""

    @property
    def kind(self) -> ModelKind: ...
    @property
    def path(self) -> Path:
        """The model file: its digest names what the engine caches and stores."""
        ...

    def run(self, batch: Batch) -> np.ndarray:
        """Sentence vectors [B, H] for bi-encoders, one score per row [B] for
        cross-encoders; raises ``InferenceError``."""
        ...


@dataclass(frozen=True)
class OutputPlan:
    kind: ModelKind
    output: str
    needs_pooling: bool  # True when the model returns token states, not sentence vectors


def detect(session: ort.InferenceSession) -> OutputPlan:
    outs = {o.name: o for o in session.get_outputs()}
    for name in ("logits", "scores"):
        if name in outs:
            return OutputPlan(ModelKind.CROSS_ENCODER, name, False)
    for name in ("sentence_embedding", "sentence_embeddings", "pooler_output_normalized"):
        if name in outs:
            return OutputPlan(ModelKind.BI_ENCODER, name, False)
    if "last_hidden_state" in outs:
        return OutputPlan(ModelKind.BI_ENCODER, "last_hidden_state", True)
    first = next(iter(outs.values()))
    shape = first.shape
    if len(shape) == 2 and shape[1] == 1:
        return OutputPlan(ModelKind.CROSS_ENCODER, first.name, False)
    if len(shape) == 3:
        return OutputPlan(ModelKind.BI_ENCODER, first.name, True)
    if len(shape) == 2:
        return OutputPlan(ModelKind.BI_ENCODER, first.name, False)
    raise ModelLoadError(f"cannot tell the model kind from outputs {list(outs)}")


class OnnxModel:
    """One ONNX Runtime session plus the knowledge of how to read its outputs."""

    def __init__(
        self,
        model_dir: Path,
        intra_op_threads: int,
        precision: Precision,
        spinning: bool = False,
        small_call_tokens: int = 0,
    ) -> None:
        """``small_call_tokens``: inputs of at most that many tokens (padded) run on a second
        session with one intra-op thread. Handing a few-token query to a pool costs more
        than the pool saves: measured on 2 cores, 8-16 tokens took the same wall time on
        one thread as on two, at 30-50% less CPU; from ~32 tokens two threads win."""
        path = model_file(model_dir, precision)
        self.path = path
        if not path.is_file():
            # Only the int8 file missing (next to model.onnx) is a quantize step.
            only_int8 = precision != "fp32" and (model_dir / "model.onnx").is_file()
            hint = "python -m app quantize" if only_int8 else "python -m app model"
            raise ModelLoadError(f"no {path.name} in {model_dir} (run `{hint}`)")
        self.session = _session(path, intra_op_threads, spinning)
        self.small_call_tokens = small_call_tokens if intra_op_threads > 1 else 0
        self._small = _session(path, 1, False) if self.small_call_tokens > 0 else None
        self.plan = detect(self.session)
        out = self.session.get_outputs()[0]
        if (
            self.plan.kind is ModelKind.CROSS_ENCODER
            and isinstance(out.shape[-1], int)
            and (out.shape[-1] > 2)
        ):
            raise ModelLoadError(f"a cross-encoder with {out.shape[-1]} labels is not a reranker")
        self._inputs = {i.name for i in self.session.get_inputs()}

    @property
    def kind(self) -> ModelKind:
        return self.plan.kind

    def run(self, batch: Batch) -> np.ndarray:
        """Sentence vectors [B, H] for bi-encoders, one logit per row [B] for cross-encoders."""
        feed = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "token_type_ids": batch.token_type_ids,
        }
        session = self.session
        if self._small is not None and batch.input_ids.size <= self.small_call_tokens:
            session = self._small
        try:
            (out,) = session.run(
                [self.plan.output], {k: v for k, v in feed.items() if k in self._inputs}
            )
        except Exception as exc:
            raise InferenceError(f"inference failed: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        if self.plan.kind is ModelKind.CROSS_ENCODER:
            logits = out.reshape(out.shape[0], -1)
            # Two-class rerankers: relevance is "relevant" minus "not relevant".
            return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
        if self.plan.needs_pooling:
            m = batch.attention_mask[..., None].astype(np.float32)
            out = (out * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    """What every served session runs with, in one place: the engine benchmark's profile
    (profiles/ops_profile.py) builds its session from the same options."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # The CPU arena grows to the largest call of every input shape and never shrinks:
    # +230 MB under varied batch shapes (docs/RELIABILITY.md, "Memory"). Without it,
    # buffers go back to the allocator after each call.
    opts.enable_cpu_mem_arena = False
    return opts


def _session(path: Path, threads: int, spinning: bool) -> ort.InferenceSession:
    opts = session_options(threads, spinning)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ModelLoadError(
            f"cannot load {path} (truncated or corrupt? rebuild it with "
            f"`python -m app model`): {first}"
        ) from exc

"""Rust ``tokenizers`` wrapper: batch encoding, truncation, padding to the batch's longest.

``encode_batch`` runs in Rust with the GIL released, which is why it belongs on the engine's
executor next to ONNX Runtime rather than on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from rerank.errors import ModelLoadError


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.attention_mask.size)


class TextTokenizer:
    def __init__(self, path: Path, max_length: int) -> None:
        if not path.is_file():
            raise ModelLoadError(f"tokenizer file not found: {path}")
        tok = Tokenizer.from_file(str(path))
        pad = tok.padding or {}
        pad_id = int(pad.get("pad_id", tok.token_to_id("[PAD]") or 0))
        pad_token = str(pad.get("pad_token", "[PAD]"))
        tok.enable_truncation(max_length=max_length)
        # No ``length``: pad only to the longest sequence of each batch.
        tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tok = tok
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> Batch:
        return _to_batch(self._tok.encode_batch(list(texts)))

    def encode_pairs(self, query: str, docs: Sequence[str]) -> Batch:
        return _to_batch(self._tok.encode_batch([(query, d) for d in docs]))


def _to_batch(encs: list[Encoding]) -> Batch:
    return Batch(
        input_ids=np.array([e.ids for e in encs], dtype=np.int64),
        attention_mask=np.array([e.attention_mask for e in encs], dtype=np.int64),
        token_type_ids=np.array([e.type_ids for e in encs], dtype=np.int64),
    )

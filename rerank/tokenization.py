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
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception on a corrupt file
            raise ModelLoadError(f"cannot read tokenizer {path}: {exc}") from exc
        pad = tok.padding or {}
        pad_id = int(pad.get("pad_id", tok.token_to_id("[PAD]") or 0))
        pad_token = str(pad.get("pad_token", "[PAD]"))
        tok.enable_truncation(max_length=max_length)
        # No ``length``: pad only to the longest sequence of each batch.
        tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tok = tok
        self.max_length = max_length
        # Truncated but unpadded: the batcher sorts by length and pads each group itself.
        self._unpadded = Tokenizer.from_str(tok.to_str())
        self._unpadded.no_padding()
        self._pad_id = pad_id
        # A copy with no truncation or padding, to find passage boundaries.
        self._plain = Tokenizer.from_str(tok.to_str())
        self._plain.no_truncation()
        self._plain.no_padding()

    def encode(self, texts: Sequence[str]) -> Batch:
        return _to_batch(self._tok.encode_batch(list(texts)))

    def encode_pairs(self, query: str, docs: Sequence[str]) -> Batch:
        return _to_batch(self._tok.encode_batch([(query, d) for d in docs]))

    def encode_seqs(self, seqs: Sequence[tuple[str, str | None]]) -> list[Encoding]:
        """Texts, or (query, document) pairs, truncated to ``max_length`` and not padded."""
        return self._unpadded.encode_batch([t if p is None else (t, p) for t, p in seqs])

    def pad(self, encs: Sequence[Encoding]) -> Batch:
        """Pad to the longest of ``encs`` only."""
        width = max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        types = np.zeros((len(encs), width), dtype=np.int64)
        for row, e in enumerate(encs):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        return Batch(ids, mask, types)

    def count(self, text: str) -> int:
        """Tokens of ``text`` without special tokens or truncation."""
        return len(self._plain.encode(text, add_special_tokens=False).ids)

    def split_passages(
        self, texts: Sequence[str], stride: int, reserve: int = 0
    ) -> list[list[str]]:
        """Cut each text into windows that fit the model (``stride`` tokens of overlap), at
        token boundaries mapped back to the original characters. ``reserve`` tokens are kept
        free for what shares the input (a cross-encoder's query and its extra [SEP])."""
        window = max(8, self.max_length - 2 - reserve)  # room for [CLS] and [SEP]
        step = max(1, window - stride)
        out: list[list[str]] = []
        for text, enc in zip(
            texts, self._plain.encode_batch(list(texts), add_special_tokens=False), strict=True
        ):
            offsets = enc.offsets
            if len(offsets) <= window:
                out.append([text])
                continue
            parts = []
            for start in range(0, len(offsets), step):
                end = min(len(offsets), start + window)
                parts.append(text[offsets[start][0] : offsets[end - 1][1]])
                if end == len(offsets):
                    break
            out.append(parts)
        return out


def _to_batch(encs: list[Encoding]) -> Batch:
    return Batch(
        input_ids=np.array([e.ids for e in encs], dtype=np.int64),
        attention_mask=np.array([e.attention_mask for e in encs], dtype=np.int64),
        token_type_ids=np.array([e.type_ids for e in encs], dtype=np.int64),
    )

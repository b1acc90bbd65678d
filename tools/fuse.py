"""Graph rewrites applied before int8 quantisation, each one measured to pay off on CPU.

- Self-attention as one ``com.microsoft`` ``Attention`` node (Q, K and V as one packed
  weight), which the quantiser turns into ``QAttention``: one int8 product for Q/K/V and
  no Transpose/Reshape round trips. Matches the attention block ``tools/convert.py``
  writes; a graph shaped otherwise (a user's own export) is left as it is.
- Residual additions in front of a LayerNormalization become ``Sum``, which ONNX Runtime
  does not fuse into ``SkipLayerNormalization``: on the 2-core AVX-512 machine that
  kernel took ~5 ms for 21x128x384 where Sum plus LayerNormalization took ~1.2 ms.

Together: 21 texts x 128 tokens 1.25-1.45x (median 1.31x) faster than plain dynamic int8 in
the same runs (docs/BENCHMARKS.md), Spearman vs fp32 unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


class _Index:
    """Producers, consumers and constants of a graph, for pattern matching."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.consts = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def parent(self, node: onnx.NodeProto, idx: int, op: str) -> onnx.NodeProto | None:
        p = self.producer.get(node.input[idx]) if idx < len(node.input) else None
        return p if p is not None and p.op_type == op else None

    def only_child(self, node: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
        kids = self.consumers.get(node.output[0], [])
        return kids[0] if len(kids) == 1 and kids[0].op_type == op else None

    def const(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def linear(self, node: onnx.NodeProto | None) -> tuple[str, np.ndarray, np.ndarray] | None:
        """``Add(MatMul(x, W), b)`` with constant W and b: (x, W, b)."""
        if node is None or node.op_type != "Add":
            return None
        mm = self.parent(node, 0, "MatMul")
        w = self.const(mm.input[1]) if mm is not None else None
        b = self.const(node.input[1])
        if mm is None or w is None or b is None:
            return None
        return mm.input[0], w, b

    def comes_from(self, name: str, source: str) -> bool:
        """True when ``name`` is computed from graph input ``source`` by elementwise ops."""
        seen, todo = set(), [name]
        while todo:
            cur = todo.pop()
            if cur == source:
                return True
            p = self.producer.get(cur)
            if cur in seen or p is None or p.op_type not in {"Cast", "Sub", "Mul", "Unsqueeze"}:
                continue
            seen.add(cur)
            todo.extend(p.input)
        return False


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None:
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def fuse_attention(model: onnx.ModelProto, mask_input: str = "attention_mask") -> int:
    """Replace each matching self-attention block by one ``Attention`` node; returns how many.

    The block: per Q/K/V ``MatMul+Add -> Reshape [0,0,N,H] -> Transpose``, scores
    ``MatMul(q, k) * scale + mask_bias``, ``Softmax``, ``MatMul(probs, v)``, ``Transpose``,
    ``Reshape``, where ``mask_bias`` is ``(1 - mask) * filter`` from the graph's
    ``attention_mask`` (the Attention op builds that bias itself from the raw 0/1 mask).
    """
    g = model.graph
    ix = _Index(g)
    mask32 = f"{mask_input}_int32"
    new: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []  # (merge Reshape, Attention)
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        add = ix.parent(sm, 0, "Add")
        mul = ix.parent(add, 0, "Mul") if add is not None else None
        qk = ix.parent(mul, 0, "MatMul") if mul is not None else None
        pv = ix.only_child(sm, "MatMul")
        out_t = ix.only_child(pv, "Transpose") if pv is not None else None
        merge = ix.only_child(out_t, "Reshape") if out_t is not None else None
        if None in (add, mul, qk, pv, merge) or _perm(out_t) != [0, 2, 1, 3]:
            continue
        assert add is not None and mul is not None and qk is not None and pv is not None
        assert merge is not None
        scale = ix.const(mul.input[1])
        if scale is None or scale.size != 1 or not ix.comes_from(add.input[1], mask_input):
            continue
        projections = [
            _projection(ix, qk, 0, [0, 2, 1, 3]),  # Q
            _projection(ix, qk, 1, [0, 2, 3, 1]),  # K, already transposed for Q·Kᵀ
            _projection(ix, pv, 1, [0, 2, 1, 3]),  # V
        ]
        found = [p for p in projections if p is not None]
        if len(found) != 3 or len({(p[0], p[1]) for p in found}) != 1:
            continue  # not three projections of one input into the same number of heads
        heads, x = found[0][0], found[0][1]
        filt = _mask_filter(ix, add.input[1])
        if filt is None:
            continue
        name = f"{merge.name or merge.output[0]}.attention"
        w = np.concatenate([p[2] for p in found], axis=1).astype(np.float32)
        b = np.concatenate([p[3] for p in found]).astype(np.float32)
        g.initializer.extend(
            [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
        )
        node = helper.make_node(
            "Attention",
            [x, f"{name}.w", f"{name}.b", mask32],
            [merge.output[0]],
            name=name,
            domain=MS_DOMAIN,
            num_heads=heads,
            scale=float(scale.reshape(())),
            mask_filter_value=filt,
        )
        new.append((merge, node))
    if not new:
        return 0
    cast = helper.make_node("Cast", [mask_input], [mask32], name=mask32, to=TensorProto.INT32)
    for merge, node in new:
        g.node.remove(merge)  # the Attention node now produces its output
        g.node.append(node)
    g.node.append(cast)
    _sort_and_prune(g)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(new)


def _projection(
    ix: _Index, consumer: onnx.NodeProto, idx: int, perm: list[int]
) -> tuple[int, str, np.ndarray, np.ndarray] | None:
    """``Transpose(Reshape(x·W + b, [0, 0, heads, size]), perm)`` feeding ``consumer``:
    (heads, x, W, b)."""
    t = ix.parent(consumer, idx, "Transpose")
    r = ix.parent(t, 0, "Reshape") if t is not None else None
    if r is None or _perm(t) != perm:
        return None
    shape = ix.const(r.input[1])
    lin = ix.linear(ix.producer.get(r.input[0]))
    if shape is None or shape.size != 4 or lin is None:
        return None
    if list(shape[:2]) != [0, 0] or int(shape[2] * shape[3]) != lin[1].shape[1]:
        return None
    return int(shape[2]), *lin


def _mask_filter(ix: _Index, bias: str) -> float | None:
    """The value padding gets in ``(1 - mask) * filter`` (possibly unsqueezed)."""
    node = ix.producer.get(bias)
    while node is not None and node.op_type == "Unsqueeze":
        node = ix.producer.get(node.input[0])
    if node is None or node.op_type != "Mul":
        return None
    for i in (0, 1):
        c = ix.const(node.input[i])
        sub = ix.producer.get(node.input[1 - i])
        one = ix.const(sub.input[0]) if sub is not None and sub.op_type == "Sub" else None
        if c is not None and c.size == 1 and one is not None and one.size == 1 and one == 1:
            return float(c.reshape(()))
    return None


def sum_residuals(model: onnx.ModelProto) -> int:
    """Turn ``Add(a, b) -> LayerNormalization`` with two computed inputs into ``Sum``."""
    ix = _Index(model.graph)
    changed = 0
    for n in model.graph.node:
        p = ix.parent(n, 0, "Add") if n.op_type == "LayerNormalization" else None
        if p is not None and not any(i in ix.consts for i in p.input):
            p.op_type = "Sum"
            changed += 1
    return changed


def _sort_and_prune(g: onnx.GraphProto) -> None:
    """Topological order, then drop nodes and constants no output depends on."""
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    order: list[onnx.NodeProto] = []
    rest = list(g.node)
    while rest:
        left = []
        for n in rest:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                left.append(n)
        if len(left) == len(rest):
            raise ValueError(f"graph has a cycle or a dangling input at {left[0].name}")
        rest = left
    needed = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    for n in reversed(order):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    _replace(g.node, reversed(keep))
    _replace(g.initializer, [i for i in g.initializer if i.name in needed])


def _replace(field: object, items: Iterable[object]) -> None:
    items = list(items)
    del field[:]  # type: ignore[attr-defined]
    field.extend(items)  # type: ignore[attr-defined]


__all__ = ["fuse_attention", "sum_residuals"]

"""Per-token activation scales for a dynamically quantised graph.

ONNX Runtime's dynamic quantisation (``DynamicQuantizeLinear`` feeding ``MatMulInteger``,
fused into ``DynamicQuantizeMatMul`` at load) takes ONE scale over the whole activation
tensor: every text in the model call, padding included. A document's score then moved by
up to ~0.02 with what else shared its call (measured; tests/integration/test_determinism.py).
Here each ``DynamicQuantizeLinear`` becomes a per-token quantisation: each token's
activation row gets its own symmetric scale (``max |x| / 127`` over the hidden axis), stored
as uint8 around a fixed zero point 128, so ``MatMulInteger`` still runs ONNX Runtime's
u8 x s8 kernel (AVX-512 VNNI) and the later ``Mul`` by ``scale x weight_scale`` just
broadcasts a [..., 1] scale instead of a scalar. A token's numbers then depend on that
token alone: the integer product is exact, the rest is elementwise.

``QAttention`` takes one input scale by definition, so :func:`split_attention` first turns
each fused ``Attention`` into its packed Q/K/V ``MatMul`` (quantised per token like the
others) and ``MultiHeadAttention`` (the attention scores in fp32, as ``QAttention`` had them).
Measured against the per-tensor graph: ~3% more time on a 20 x 128-token call, Spearman vs
fp32 0.992 instead of 0.984 (docs/BENCHMARKS.md, session 7).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def per_token_activations(model: onnx.ModelProto) -> int:
    """Rewrite every ``DynamicQuantizeLinear`` and the products it feeds; returns how many."""
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    consts = [
        numpy_helper.from_array(np.array([-1], np.int64), "rowq.flat"),
        numpy_helper.from_array(np.array(128, np.uint8), "rowq.zp"),
        numpy_helper.from_array(np.array(127.0, np.float32), "rowq.qmax"),
        numpy_helper.from_array(np.array(1e-8, np.float32), "rowq.tiny"),
        numpy_helper.from_array(np.array(1.0, np.float32), "rowq.one"),
    ]
    done = 0
    drop: set[int] = set()
    swap: dict[int, list[onnx.NodeProto]] = {}
    for node in g.node:
        if node.op_type != "DynamicQuantizeLinear":
            continue
        x, q = node.input[0], node.output[0]
        p = f"rowq{done}."
        rows = p + "scale"  # [..., 1]: one scale per token
        swap[id(node)] = [
            helper.make_node("Abs", [x], [p + "abs"]),
            helper.make_node("ReduceMax", [p + "abs"], [p + "amax"], axes=[-1], keepdims=1),
            helper.make_node("Max", [p + "amax", "rowq.tiny"], [p + "amax_"]),
            helper.make_node("Div", [p + "amax_", "rowq.qmax"], [rows]),
            helper.make_node("Shape", [x], [p + "shape"]),
            helper.make_node("Flatten", [x], [p + "x2"], axis=-1),  # [tokens, hidden]
            helper.make_node("Reshape", [rows, "rowq.flat"], [p + "s1"]),
            helper.make_node("Shape", [p + "s1"], [p + "n"]),
            helper.make_node("Expand", ["rowq.zp", p + "n"], [p + "zps"]),
            helper.make_node("QuantizeLinear", [p + "x2", p + "s1", p + "zps"], [p + "q2"], axis=0),
            helper.make_node("Reshape", [p + "q2", p + "shape"], [q]),
        ]
        for mm in consumers.get(q, []):
            cast, mul, scales = _chain(mm, consumers, producer)
            w_scale = next(i for i in scales.input if i != node.output[1])
            out = mul.output[0]
            drop.update((id(cast), id(mul), id(scales)))
            # The product scaled per weight column in one kernel (MatMulIntegerToFloat
            # takes a scalar activation scale: 1 here), then each row by its own scale.
            swap[id(mm)] = [
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [q, mm.input[1], "rowq.one", w_scale, "rowq.zp", *mm.input[3:4]],
                    [out + ".unscaled"],
                    domain="com.microsoft",
                ),
                helper.make_node("Mul", [out + ".unscaled", rows], [out]),
            ]
        done += 1
    if done:
        final = [m for n in g.node if id(n) not in drop for m in swap.get(id(n), [n])]
        del g.node[:]
        g.node.extend(final)
        g.initializer.extend(consts)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return done


def _chain(
    mm: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    producer: dict[str, onnx.NodeProto],
) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]:
    """``MatMulInteger -> Cast -> Mul(Mul(x_scale, w_scale))``, as the dynamic quantiser
    writes a product; anything else (``QAttention``: one input scale) is refused."""
    cast = consumers.get(mm.output[0], []) if mm.op_type == "MatMulInteger" else []
    mul = consumers.get(cast[0].output[0], []) if len(cast) == 1 else []
    scales = producer.get(mul[0].input[1]) if len(mul) == 1 else None
    if (
        scales is None
        or cast[0].op_type != "Cast"
        or mul[0].op_type != "Mul"
        or scales.op_type != "Mul"
    ):
        raise ValueError(f"{mm.op_type} {mm.name}: not a MatMulInteger -> Cast -> Mul chain")
    return cast[0], mul[0], scales


def split_attention(model: onnx.ModelProto) -> int:
    """Each fused ``Attention`` node (tools/fuse.py) becomes its packed Q/K/V projection as
    a plain ``MatMul`` (which the quantiser quantises, and :func:`per_token_activations`
    then scales per token) feeding ``MultiHeadAttention``, the same fp32 attention kernel
    without the projection in it. Returns how many."""
    g = model.graph
    out: list[onnx.NodeProto] = []
    done = 0
    for n in g.node:
        if n.op_type != "Attention" or n.domain != "com.microsoft" or len(n.input) != 4:
            out.append(n)
            continue
        x, w, b, mask = n.input
        p = f"{n.name or n.output[0]}.split."
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        out += [
            helper.make_node("MatMul", [x, w], [p + "qkv_"], name=p + "qkv"),
            helper.make_node("Add", [p + "qkv_", b], [p + "qkv"]),
            helper.make_node("Split", [p + "qkv"], [p + "q", p + "k", p + "v"], axis=-1),
            helper.make_node(
                "MultiHeadAttention",
                [p + "q", p + "k", p + "v", "", mask],
                list(n.output),
                name=p + "mha",
                domain="com.microsoft",
                **attrs,
            ),
        ]
        done += 1
    if done:
        del g.node[:]
        g.node.extend(out)
    return done


__all__ = ["per_token_activations", "split_attention"]

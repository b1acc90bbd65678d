"""int8 dynamic quantisation of a converted model.

Weights become int8 per output channel; activations are quantised on the fly, each token
with its own scale (tools/rowquant.py), so a text's score never depends on what else is in
the model call (ONNX Runtime's own dynamic quantisation takes one scale per call). On CPUs
with AVX-512 VNNI (or AVX-VNNI) ONNX Runtime runs the u8×s8 products in one instruction,
which is where the speed comes from. Before quantising, tools/fuse.py rewrites attention
into one ``Attention`` node, split here into its packed Q/K/V product (quantised) and
``MultiHeadAttention`` (fp32 scores, as before), and keeps residual additions out of
``SkipLayerNormalization``. docs/BENCHMARKS.md and docs/QUALITY.md hold the measured
speed and quality.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rerank.errors import ModelLoadError
from rerank.model import model_file


def quantize_int8(model_dir: Path) -> Path:
    """Write ``model.int8.onnx`` next to ``model.onnx``; returns its path."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tools.fuse import fuse_attention, sum_residuals
    from tools.rowquant import per_token_activations, split_attention

    src, dst = model_file(model_dir, "fp32"), model_file(model_dir, "int8")
    if not src.is_file():
        raise ModelLoadError(f"no model.onnx in {model_dir} to quantise")
    tmp = dst.with_suffix(".tmp")
    model = onnx.load(str(src))
    fuse_attention(model)
    split_attention(model)
    sum_residuals(model)
    # The quantiser logs a warning per tensor whose type its shape inference cannot name
    # (our graph's Reshape/Transpose chain); the types are all float, which we tell it.
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            model,
            tmp,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            # Only products with a weight: per_token_activations rewrites exactly those.
            extra_options={"DefaultTensorType": TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
    finally:
        quiet.setLevel(level)
    quantized = onnx.load(str(tmp))
    per_token_activations(quantized)
    onnx.save(quantized, str(tmp))
    tmp.replace(dst)
    return dst


__all__ = ["quantize_int8"]

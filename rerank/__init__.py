"""Scoring: tokenizer, ONNX Runtime sessions and the engine that owns the CPU executor."""

"""Offline tools, apart from the serving path: convert and quantise the model, check it
against a numpy reference, evaluate ranking quality. They need the ``tools`` extra
(``pip install -e '.[tools]'``: onnx, safetensors, ir-measures); the service never imports
them."""

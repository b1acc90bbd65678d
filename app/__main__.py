import os
import sys

# numpy's BLAS (OpenBLAS) would start a thread per core for a product over more than a few
# hundred rows (the embedded kNN's matrix-vector product): those threads fight ONNX Runtime's
# for the same cores, and on a busy 2-core host one 1,400-row product took 27 us at the median
# and 61 ms at p99, against 42 us / 0.5 ms on one thread (docs/QUALITY.md, hybrid retrieval).
# Read when numpy loads, so set before anything imports it; an operator's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from app.cli import main

sys.exit(main())

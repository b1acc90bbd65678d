"""HTTP layer: parses, validates, serialises and maps errors; holds no ranking logic."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rerank-service")  # /openapi.json and rerank_build_info
except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
    __version__ = "0+unknown"

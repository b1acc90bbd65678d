"""Start-up failures as one line a person can act on: what is wrong, the path, the fix.

``python -m app`` prints this line and exits non-zero; the traceback only with ``--debug``
(a missing model is a setup step, not a crash)."""

from __future__ import annotations

import errno

from rerank.errors import RerankError
from retrieval.errors import RetrievalError

# What a start-up failure can be: anything else is a bug and keeps its traceback.
EXPECTED: tuple[type[BaseException], ...] = (RerankError, RetrievalError, OSError)
# A configuration that cannot run (a flag out of range, a blank key source): exit 2, as
# argparse does for a bad command line; any other start-up failure exits 1.
CONFIG_EXIT = 2
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
WRITABLE_HINT = "the data dir must be writable: point --data-dir (RERANK_DATA_DIR) elsewhere"


def one_line(exc: BaseException) -> str:
    """The message, on one line, with the fix when we know it."""
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
        what = exc.strerror or type(exc).__name__
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{what}{where}"
        if exc.errno in _NOT_WRITABLE:
            text += f" ({WRITABLE_HINT})"
        elif exc.errno == errno.EADDRINUSE:
            text += " (another process listens there: choose --port)"
        return text
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "ReadOnlyFilesystem" in text or "PermissionDenied" in text:
        text += f" ({WRITABLE_HINT})"
    return text[:500]

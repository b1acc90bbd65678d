"""Start-up failures as one line a person can act on: what is wrong, the path, the fix.

``python -m app`` prints this line and exits non-zero; the traceback only with ``--debug``
(a missing model is a setup step, not a crash). Exit codes, the same for every command:
0 done; 1 the work failed part way (a dependency or I/O: a rerun may succeed); 2 nothing was
done because of the configuration (a flag, a file, the index named: the line says what to
change; argparse's usage errors are 2 as well)."""

from __future__ import annotations

import errno

from rerank.errors import ModelLoadError, RerankError
from retrieval.errors import IndexMissing, RetrievalError, SetupError

# What a start-up failure can be: anything else is a bug and keeps its traceback.
EXPECTED: tuple[type[BaseException], ...] = (RerankError, RetrievalError, OSError)
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
WRITABLE_HINT = "the data dir must be writable: point --data-dir (RERANK_DATA_DIR) elsewhere"


FAILED, SETUP = 1, 2


def exit_code(exc: BaseException) -> int:
    """``SETUP`` for what only a change of configuration fixes, else ``FAILED``."""
    if isinstance(exc, SetupError | ModelLoadError | IndexMissing):
        return SETUP
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
        return SETUP  # a path, a permission, a port taken
    if "ReadOnlyFilesystem" in str(exc) or "PermissionDenied" in str(exc):
        return SETUP  # the same, as the index library words it
    return FAILED


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

"""Files replaced in one rename: a reader sees the old contents or the new, never part of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def replacing(path, suffix=".tmp"):
    """Yield ``(file, temp_path)`` for the new contents of ``path``.

    The bytes go to a temporary file in the same directory (so the rename
    cannot cross file systems), are flushed to disk when the block ends, and
    then replace ``path`` in one rename.  If the block raises, the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

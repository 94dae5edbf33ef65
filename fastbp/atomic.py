"""Files replaced in one rename: a reader sees the old contents or the new, never part of either."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path


@contextlib.contextmanager
def replacing(path, suffix=".tmp"):
    """Yield ``(file, temp_path)`` for the new contents of ``path``.

    The bytes go to a temporary file in the same directory (so the rename
    cannot cross file systems), are flushed to disk when the block ends, and
    then replace ``path`` in one rename.  If the block raises, the temporary
    file is removed and ``path`` is left as it was.  The new file gets the
    permissions of the one it replaces, or those a plain ``open`` would give
    (the umask's), and a path that cannot be written is refused by its name
    before anything is written.  A symbolic link stays a link: its target is
    what gets replaced, as a plain ``open(path, "wb")`` would write through it.
    """
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"no directory {path.parent} to write into", str(path))
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    fd, tmp = _create_beside(path, suffix, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:  # created no wider than the file it replaces, now as wide
                os.chmod(fd, mode)
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_directory(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _create_beside(path, suffix, mode):
    """``(fd, name)`` of a new hidden file next to ``path``, created with ``mode`` less the
    umask (``tempfile.mkstemp`` makes every file 0o600)."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}")
        with contextlib.suppress(FileExistsError):
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), tmp


def _sync_directory(directory):
    """Flush the rename itself to disk: until the directory is synced, a power cut can bring
    back the old entry (or none) after ``os.replace`` has returned."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

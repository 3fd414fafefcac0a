"""Files written so that a reader never sees a partial one, even if the writer is killed midway."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(data: bytes | memoryview, path: str | Path) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either its previous content or all of ``data``.

    The bytes go to a temporary file in ``path``'s own folder (a rename is atomic only within one file
    system), are flushed to disk, and the file is renamed over ``path``; the folder entry is then flushed
    too. On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

"""The one atomic file writer of :mod:`models` (bundles, training checkpoints, histories).

A file is written to a temporary file beside its destination, flushed and fsynced, then
renamed over the destination, and the folder is fsynced, so a reader (or a crash) sees the
old file or the new one, never a torn one. ``models`` imports neither ``dicom_node`` nor
``workers``, so it keeps this small writer of its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text"]


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, then rename it over ``path``.

    Parameters
    ----------
    path : str or pathlib.Path
        Destination; its folder must exist.
    write : callable
        Called once with the temporary file opened for binary writing.

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    The temporary file is removed when ``write`` (or anything after it) fails.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened on Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Crash-safe file writes: write a temporary file, fsync it, rename it over the target, fsync the folder.

Every file cvret writes (manifests, segments, compressed codes, reports, figures) goes through
here, so a kill or a full disk leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

TMP_MARK = ".tmp-"  # temporary names contain this; writers remove leftovers of crashed runs


def fsync_dir(folder: Path | str):
    """Make a rename or unlink in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path | str) -> Path:
    """A unique temporary sibling of `path` that keeps its suffix (numpy, faiss and matplotlib look at it)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path | str, fsync: bool = True):
    """Yield a temporary path to write to; on success it is fsynced and renamed onto `path`.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes, fsync: bool = True):
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: Path | str, text: str, fsync: bool = True):
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def describe_os_error(e: OSError) -> str:
    """A short, true phrase for the write errors a user can act on."""
    if e.errno == errno.ENOSPC:
        return "disk full (no space left on device)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EFBIG:
        return "file too large for this file system or process limit"
    return e.strerror or str(e)

"""The one error type a user can cause (a bad flag, path, file or model).

Every such error is a :class:`UserError` whose message ends with what to do;
the command-line tools report it in one line and exit with status 2.  Each
module has its own subclass (``ConfigError``, ``MetadataError``,
``CheckpointError``, ``ImageLoadError``, ``ModelCheckError``) so callers can
tell them apart.
"""
from __future__ import annotations

import errno
import os
import shutil

__all__ = ["UserError", "WriteError", "write_failure", "ModelCheckError"]


class UserError(ValueError):
    """Something the user can fix; the message says what and how."""


class ModelCheckError(UserError):
    """The CAM layer and head of a model do not fit the CAM methods asked for."""


class WriteError(UserError):
    """A file could not be written (full disk, quota, permissions)."""


def write_failure(what: str, path: str, error: BaseException, needed: int | None = None,
                  kept: str = "") -> WriteError:
    """One sentence for a failed write: the path, the space needed and free
    when the disk is full, and what was kept (``kept``)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    text = str(error)
    full = (getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or "No space left" in text or "file write failed" in text
            or (needed is not None and free is not None and free < needed))
    code = getattr(error, "errno", None)
    if full:
        size = f" (it needs about {_mb(needed)}, {_mb(free)} free)" if needed and free is not None \
            else ""
        reason = f"no space left on the device{size}; free some space or choose another --root"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the file system is read-only" if code == errno.EROFS else "permission denied"
        reason = f"{why}; choose another --root, or make it writable"
    else:
        reason = (text.splitlines()[0] if text else type(error).__name__)[:200]
    return WriteError(f"cannot write {what} {path}: {reason}" + (f"; {kept}" if kept else ""))


def _mb(count: int | None) -> str:
    if count is None:
        return "?"
    return f"{count / 2 ** 20:.1f} MB" if count >= 2 ** 20 else f"{max(1, count // 1024)} kB"

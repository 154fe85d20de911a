"""The one error type a user can cause (a bad flag, path, file or model).

Every such error is a :class:`UserError` whose message ends with what to do;
the command-line tools report it in one line and exit with status 2.  Each
module has its own subclass (``ConfigError``, ``MetadataError``,
``CheckpointError``, ``ImageLoadError``, ``ModelCheckError``) so callers can
tell them apart.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Something the user can fix; the message says what and how."""

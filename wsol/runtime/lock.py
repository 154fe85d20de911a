"""One run per experiment folder.

A run that trains into a folder holds ``<folder>/run.lock``: its pid, host
and start time, created atomically (``O_EXCL``).  Another run that would
delete the folder (``--override_cache``) or write into it (``--resume``, a
plain retry) refuses while the holder lives.  A lock left by a process that
died (same host, pid gone) is stale and taken over; a lock of another host
cannot be checked from here, so it is refused with the file to delete.
"""
from __future__ import annotations

import json
import os
import socket
import time

from wsol.errors import UserError

__all__ = ["FolderBusy", "FolderLock", "LOCK_NAME"]

LOCK_NAME = "run.lock"


class FolderBusy(UserError):
    """Another live run holds the experiment folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class FolderLock:
    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False

    def owner(self) -> dict | None:
        """The recorded holder, or None (no lock, or an unreadable one)."""
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def live_owner(self) -> dict | None:
        """The holder if it may still run (not this process)."""
        owner = self.owner()
        if owner is None or (owner.get("pid") == os.getpid()
                             and owner.get("host") == socket.gethostname()):
            return None
        if owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", 0))):
            return None  # stale: its process is gone
        return owner

    def check(self, action: str) -> None:
        """A FolderBusy naming the holder when another live run holds the folder."""
        owner = self.live_owner()
        if owner is not None:
            where = ("this machine" if owner.get("host") == socket.gethostname()
                     else f"host {owner.get('host')}")
            raise FolderBusy(
                f"cannot {action} {self.folder}: it is in use by process {owner.get('pid')} on "
                f"{where} since {owner.get('since')}; wait for it, choose another "
                f"--experiment_name, or delete {self.path} if that run is gone")

    def acquire(self, action: str) -> None:
        """Hold the folder (which must exist); a stale lock is taken over."""
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.check(action)
                try:
                    os.remove(self.path)  # stale, or our own from before
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return
        self.check(action)
        raise FolderBusy(f"cannot {action} {self.folder}: could not create {self.path}")

    def release(self) -> None:
        if self.held:
            owner = self.owner()
            if owner is not None and owner.get("pid") == os.getpid():
                try:
                    os.remove(self.path)
                except OSError:
                    pass
            self.held = False

"""The experiment folder of a run: created, locked, logged into, recorded,
and removed again when a run fails before its first checkpoint.

``<root>/<experiment_name>/`` holds ``config.json`` (the run's settings,
:mod:`wsol.settings`), ``log.log``, the checkpoints
(``<epoch>_checkpoint.pth.tar``, ``last_checkpoint.pth.tar``, the mid-epoch
``interrupted_checkpoint.pth.tar``) and ``results_<split>.json``.  Training
never silently overwrites a folder that holds checkpoints or results, nor
touches one another live run holds (:mod:`wsol.runtime.lock`).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any

from wsol.errors import UserError, write_failure
from wsol.results import run_record, write_json
from wsol.runtime.distributed import DistContext
from wsol.runtime.lock import FolderLock
from wsol.settings import CONFIG_NAME, RunSettings

__all__ = ["Experiment", "ExperimentError", "checkpoint_path", "resume_candidates",
           "remove_stale_temporaries", "holds_results", "configure_logging", "INTERRUPTED"]

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # <folder>/interrupted_checkpoint.pth.tar: a mid-epoch state


class ExperimentError(UserError):
    """The experiment folder cannot be used as asked."""


def checkpoint_path(folder: str, prefix: str) -> str:
    """``<folder>/<prefix>_checkpoint.pth.tar``; an epoch is ``3`` (the public
    code's name) or ``epoch3``."""
    if prefix.startswith("epoch") and prefix[5:].isdigit():
        prefix = prefix[5:]
    return os.path.join(folder, f"{prefix}_checkpoint.pth.tar")


def resume_candidates(folder: str | None) -> list[str]:
    """The checkpoints a ``--resume`` may continue from: the mid-epoch one,
    ``last`` and every epoch's present."""
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith("_checkpoint.pth.tar"))


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the ``*.tmp`` files of saves a killed run left behind (the
    caller holds the folder); their names."""
    removed = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tmp"):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def holds_results(folder: str) -> bool:
    """Whether a folder holds checkpoints or results (not just a failed run's
    log and records)."""
    return any(name.endswith(".pth.tar") or (name.startswith("results_")
                                             and name.endswith(".json"))
               for name in os.listdir(folder))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, not the stream it was
    created with (a replaced or closed stderr must not break logging)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(log_folder: str | None, level: int = logging.INFO) -> None:
    """Log to stderr and, when there is an experiment folder, to its log.log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = _StderrHandler()
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if log_folder:
        file_handler = logging.FileHandler(os.path.join(log_folder, "log.log"))
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    root.setLevel(level)


class Experiment:
    """Context manager around a run's folder (rank 0 only; other ranks log
    warnings to stderr and touch no file).

    On entry: the folder is made (or, for ``--resume``, found), locked for
    training, logged into, and the settings are written to ``config.json``
    (``config_eval.json`` for ``--eval_only``).  On exit: the lock is released,
    and a folder this run created is removed if it holds no checkpoint or
    result yet (a run that failed before its first checkpoint)."""

    def __init__(self, settings: RunSettings, ctx: DistContext = DistContext(),
                 code_dir: str | None = None):
        self.settings = settings
        self.ctx = ctx
        self.folder = settings.log_folder
        self.code_dir = code_dir
        self.created = False
        self.lock: FolderLock | None = None
        self.removed: list[str] = []  # *.tmp files of interrupted saves

    def __enter__(self) -> "Experiment":
        if not self.ctx.is_main:
            configure_logging(None, logging.WARNING)
            return self
        try:
            try:
                self._open()
            except OSError as error:  # a read-only or foreign folder: nothing was written
                raise write_failure("into the experiment folder", self.folder, error) from None
            try:
                configure_logging(self.folder, logging.DEBUG if self.settings.runtime.debug
                                  else logging.INFO)
            except OSError as error:
                raise write_failure("the log", os.path.join(self.folder, "log.log"),
                                    error) from None
            for name in self.removed:
                log.info("removed %s, left by an interrupted save", name)
            for note in self.settings.notes:
                log.info("%s", note)
            self.write_config()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is not None and self.created and os.path.isdir(self.folder) \
                    and not holds_results(self.folder):
                configure_logging(None)  # release log.log before removing it
                shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _open(self) -> None:
        runtime = self.settings.runtime
        folder = self.folder
        lock = FolderLock(folder)
        if runtime.resume and not runtime.eval_only:
            if not resume_candidates(folder):
                raise ExperimentError(f"--resume: {folder} holds no checkpoint to resume from")
            lock.acquire("resume in")
            self.lock = lock
            self.removed = remove_stale_temporaries(folder)
            return
        existed = os.path.isdir(folder)
        if runtime.eval_only:
            os.makedirs(folder, exist_ok=True)
            self.created = not existed
            return
        if existed:
            lock.check("replace" if runtime.override_cache else "train in")
            if holds_results(folder) and not runtime.override_cache:
                raise ExperimentError(
                    f"experiment folder {folder} exists: choose another --experiment_name or "
                    f"pass --override_cache to replace it, or --resume to continue it")
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)
        self.created = True
        lock.acquire("train in")
        self.lock = lock

    def write_config(self) -> None:
        """The settings as they are, and how the run was made."""
        record: dict[str, Any] = self.settings.to_dict()
        record["run"] = run_record(list(self.settings.argv), self.code_dir,
                                   seed=self.settings.choices.seed)
        name = "config_eval.json" if self.settings.runtime.eval_only else CONFIG_NAME
        write_json(record, os.path.join(self.folder, name))

"""Experiment tracking with wandb, optional: it never prompts, fails or stalls a run.

Online logging needs an API key (``WANDB_API_KEY`` or ``wandb login``'s netrc
entry) and a reachable server (``WANDB_BASE_URL``, default api.wandb.ai).
Without either, the run logs offline -- never asking for a key, whatever the
terminal -- and says in one line where the offline run is and how to sync
it.  ``WANDB_DIR`` is honoured (default: the experiment folder).
"""
from __future__ import annotations

import logging
import netrc
import os
import socket
from typing import Any
from urllib.parse import urlparse

__all__ = ["Tracker"]

log = logging.getLogger(__name__)


def _server() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Tracker:
    """wandb when asked for and available; otherwise a no-op.  A failing wandb
    (not installed, no key, no network, any exception) logs one warning and
    never fails or stalls the run."""

    def __init__(self, mode: str, project: str, name: str | None, config: dict[str, Any],
                 folder: str):
        self.run = None
        if mode == "off":
            return
        try:
            import wandb
        except ImportError:
            log.warning("--wandb %s: wandb is not installed (pip install wandb); not logging", mode)
            return
        if mode == "online":
            host, port = _server()
            if not _has_api_key(host):
                log.warning("--wandb online: no wandb API key (set WANDB_API_KEY or run `wandb "
                            "login`); logging offline")
                mode = "offline"
            elif not _reachable(host, port):
                log.warning("--wandb online: the wandb server %s is unreachable; logging "
                            "offline", host)
                mode = "offline"
        directory = os.environ.get("WANDB_DIR") or folder
        try:
            try:  # wandb's own messages off: ours say what matters
                settings = wandb.Settings(init_timeout=30, silent=True)
            except Exception:
                settings = wandb.Settings(init_timeout=30)
            self.run = wandb.init(project=project, name=name, config=config, dir=directory,
                                  mode=mode, settings=settings)
        except Exception as error:  # wandb raises many kinds; none may stop training
            log.warning("wandb could not start (%s); not logging", error)
            self.run = None
            return
        if mode == "offline" and self.run is not None:
            run_folder = os.path.dirname(str(getattr(self.run, "dir", directory)))
            log.info("wandb: logging offline to %s; upload it later with `wandb sync %s`",
                     run_folder, run_folder)

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            try:
                self.run.log(values, step=step)
            except Exception as error:
                log.warning("wandb log failed (%s); disabling it", error)
                self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as error:
                log.warning("wandb finish failed (%s)", error)
            self.run = None

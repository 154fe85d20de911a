"""Experiment tracking with wandb, optional: it never fails or stalls a run."""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

__all__ = ["Tracker"]

log = logging.getLogger(__name__)


def _wandb_reachable(timeout: float = 3.0) -> bool:
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


class Tracker:
    """wandb when asked for and available; otherwise a no-op.  A failing
    wandb (not installed, no key, no network) logs one warning and never
    fails or stalls the run: online mode without a reachable server falls
    back to offline, which can be synced later with ``wandb sync``."""

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
        if mode == "online" and not _wandb_reachable():
            log.warning("--wandb online: the wandb server is unreachable; logging offline")
            mode = "offline"
        try:
            self.run = wandb.init(project=project, name=name, config=config, dir=folder,
                                  mode=mode, settings=wandb.Settings(init_timeout=30))
        except Exception as error:  # wandb raises many kinds; none may stop training
            log.warning("wandb could not start (%s); not logging", error)
            self.run = None

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

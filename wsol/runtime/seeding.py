"""Device selection, seeding and the random states a checkpoint keeps."""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)


def resolve_device(gpus: str | None) -> torch.device:
    """``--gpus``: without CUDA fall back to the CPU with one warning; with
    CUDA a GPU index that does not exist is an error."""
    if not torch.cuda.is_available():
        if gpus not in (None, ""):
            log.warning("--gpus %s: CUDA is not available, running on the CPU", gpus)
        return torch.device("cpu")
    if gpus in (None, ""):
        return torch.device("cuda", 0)
    indices = [s.strip() for s in str(gpus).split(",") if s.strip()]
    count = torch.cuda.device_count()
    for index in indices:
        if not index.isdigit() or int(index) >= count:
            raise ValueError(f"--gpus {gpus}: GPU {index} does not exist "
                             f"(this machine has {count}: 0..{count - 1})")
    if len(indices) > 1:
        log.warning("--gpus %s: one process uses GPU %s; run under torchrun for several GPUs",
                    gpus, indices[0])
    return torch.device("cuda", int(indices[0]))


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training epoch draws from, in a form that
    ``torch.load(weights_only=True)`` accepts (tensors, ints, tuples)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

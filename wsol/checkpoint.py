"""Loading and saving weights without trusting pickles.

Every load uses ``torch.load(..., weights_only=True)``: a file that needs
arbitrary unpickling is refused, never executed.  Checkpoints are written to a
temporary file and renamed, so an interrupted save never leaves a truncated
file that looks valid.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from typing import Any

import torch
import torch.nn as nn

from wsol.dual_branch import SIGMOID_BRANCH, CAMModel

__all__ = ["CheckpointError", "load_checkpoint_file", "save_checkpoint",
           "load_into_cam_model", "load_torchvision_pretrained", "export_state_dict"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unsafe, or does not fit the model."""


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Read a checkpoint safely; returns a dict with at least ``state_dict``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it needs arbitrary unpickling, which could "
            f"run code ({str(error).splitlines()[0]}). Re-save it as a plain "
            f"state_dict with torch.save(model.state_dict(), ...).") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise CheckpointError(f"{path} holds neither a state_dict nor {{'state_dict': ...}}")


def save_checkpoint(payload: dict[str, Any], path: str) -> None:
    """Atomic save: temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def export_state_dict(model: CAMModel) -> dict[str, torch.Tensor]:
    """Weights in the public code's layout: base keys as wsolevaluation names
    them (``fc.weight``...) and the sigmoid branch as ``fc2.*``."""
    return {k[len("model."):] if k.startswith("model.") else k: v
            for k, v in model.state_dict().items()}


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _describe_mismatch(path: str, missing: list[str], unexpected: list[str],
                       shapes: list[str]) -> str:
    def head(keys):
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
    parts = [f"checkpoint {path} does not fit the model"]
    if missing:
        parts.append(f"missing keys: {head(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {head(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {head(shapes)}")
    parts.append("check --architecture, --large_feature_map and the dataset's number of classes")
    return "; ".join(parts)


def _load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], path: str,
                 allowed_missing: tuple[str, ...] = ()) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(allowed_missing)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(_describe_mismatch(path, missing, unexpected, shapes))
    module.load_state_dict(state_dict, strict=False)


def load_into_cam_model(model: CAMModel, path: str) -> dict[str, Any]:
    """Load a vanilla or dual-branch checkpoint (ours or wsolevaluation's,
    keys possibly prefixed ``module.``).  A vanilla checkpoint fills the base
    model; a dual-branch one also fills ``fc2``.  Returns the checkpoint dict."""
    checkpoint = load_checkpoint_file(path)
    state = _strip(checkpoint["state_dict"], "module.")
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    branch = {k[len(SIGMOID_BRANCH) + 1:]: v for k, v in state.items()
              if k.startswith(SIGMOID_BRANCH + ".")}
    base = {k: v for k, v in state.items() if not k.startswith(SIGMOID_BRANCH + ".")}
    _load_strict(model.model, base, path)
    if model.fc2 is not None:
        if not branch:
            raise CheckpointError(
                f"{path} is a vanilla checkpoint without the sigmoid branch fc2: "
                f"fine-tune one first (--model_structure b2 --ft_ckpt {path}), or "
                f"evaluate it as --model_structure vanilla")
        _load_strict(model.fc2, branch, path)
    return checkpoint


def _align_vgg_features(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision numbers VGG's conv layers with the max-pools in between; a
    model that drops a max-pool (large_feature_map) shifts the indices."""
    pattern = re.compile(r"^features\.(\d+)\.")
    src = sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})
    dst = sorted({int(m.group(1)) for k in model.state_dict() if (m := pattern.match(k))})
    mapping = dict(zip(src, dst))
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[f"features.{mapping[int(m.group(1))]}.{k[m.end():]}" if m else k] = v
    return out


def load_torchvision_pretrained(model: CAMModel, path: str) -> None:
    """Initialise the backbone from a local torchvision ImageNet ``.pth``.

    Keys of layers the CAM architecture does not have (classifier, aux
    logits, Mixed_7*) are dropped; the CAM-specific layers (conv6, SPG_A3_*,
    head) stay at their initialisation.  Any other mismatch is an error.
    """
    state = _strip(load_checkpoint_file(path)["state_dict"], "module.")
    own = model.model.state_dict()
    if model.architecture == "vgg16":
        state = _align_vgg_features({k: v for k, v in state.items()
                                     if k.startswith("features.")}, model.model)
    state = {k: v for k, v in state.items() if k in own or not _is_droppable(k)}
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    head_prefix = model.head_name + "."
    shapes_not_head = [s for s in shapes if not s.startswith(head_prefix)]
    missing = [k for k in own if k not in state and not _is_cam_specific(k, model)]
    if unexpected or shapes_not_head or missing:
        raise CheckpointError(_describe_mismatch(path, missing, unexpected, shapes_not_head))
    state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.model.load_state_dict(state, strict=False)


def _is_droppable(key: str) -> bool:
    return key.startswith(("classifier.", "AuxLogits.", "Mixed_7", "fc."))


def _is_cam_specific(key: str, model: CAMModel) -> bool:
    return key.startswith((model.head_name + ".", "conv6.", "SPG_A3_", "SPG_A4."))

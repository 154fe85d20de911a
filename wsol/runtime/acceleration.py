"""Speed settings shared by fine-tuning and evaluation: bf16 autocast,
channels-last memory format and ``torch.compile``.

None of them changes what is computed, only how: ``--channels_last`` and
``--compile`` give the same maps and metrics up to float rounding,
``--amp`` runs the model's convolutions and matrix products in bfloat16
(CAM maps are still formed in float32 from the captured activations; see
:func:`wsol.cams.compute_cams`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from wsol.model import CAMModel

__all__ = ["Acceleration", "amp_supported", "autocast", "check_amp", "compiled_blocks",
           "prepare_model", "to_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acceleration:
    amp: bool = False            # bfloat16 autocast for the model's passes
    channels_last: bool = False  # NHWC images and convolution weights
    compile: bool = False        # torch.compile the blocks between the hooks

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def amp_supported(device: torch.device) -> bool:
    """bf16 autocast runs on every CPU torch supports and on CUDA GPUs with
    bf16 arithmetic (Ampere and newer)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def autocast(device: torch.device, accel: Acceleration):
    """The autocast context of the model's passes (a no-op without ``amp``)."""
    if not accel.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def check_amp(device: torch.device, accel: Acceleration) -> Acceleration:
    """``--amp`` where bf16 is unavailable: one warning, then float32."""
    if accel.amp and not amp_supported(device):
        log.warning("--amp: %s has no bfloat16 support; running in float32", device)
        return Acceleration(False, accel.channels_last, accel.compile)
    return accel


def to_device(images: torch.Tensor, device: torch.device, accel: Acceleration) -> torch.Tensor:
    """Asynchronous copy (the loader pins memory on CUDA machines), in the
    model's memory format."""
    return images.to(device, non_blocking=True, memory_format=accel.memory_format)


def compiled_blocks(model: CAMModel) -> list[str]:
    """Names of the submodules ``prepare_model`` compiles: the largest ones
    containing neither the CAM layer nor the head.

    The CAM layer and the head carry the hooks that capture activations and
    add the sigmoid branch; those hooks come and go at run time and switch
    autograd on mid-forward, which must stay outside compiled graphs.  So the
    hooked modules run eagerly and everything around them (for ResNet50 the
    stem, layer1-3 and each bottleneck of layer4) is compiled.
    """
    hooked = (model.feature_layer_name, model.head_name)
    names: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            contains_hook = any(h == full or h.startswith(full + ".") for h in hooked)
            if contains_hook:
                visit(child, full + ".")
            elif any(True for _ in child.parameters()):
                names.append(full)  # parameter-free glue (ReLU, pooling) stays eager

    visit(model.model, "")
    return names


def prepare_model(model: CAMModel, device: torch.device, accel: Acceleration) -> CAMModel:
    """Move ``model`` to ``device`` in the chosen memory format and compile
    its blocks in place.  Parameter names (and so checkpoints) are unchanged."""
    model = model.to(device, memory_format=accel.memory_format)
    if accel.compile:
        names = compiled_blocks(model)
        for name in names:
            model.model.get_submodule(name).compile()
        log.info("compiled %d blocks of %s (first calls are slow while they compile)",
                 len(names), model.architecture)
    return model

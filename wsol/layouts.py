"""How a CAM layer lays out its activations, and how to read them as maps.

CAM methods work on ``A`` as ``[B, K, h, w]`` (channels first).  A CAM layer
may output that (``nchw``), the channels-last ``[B, h, w, K]`` of Swin-style
models (``nhwc``), or a token sequence ``[B, N, D]`` (``tokens``): ViTs put
class/distillation tokens first, then the ``h x w`` patch tokens in row-major
order, so the map is the patch tokens reshaped to the grid (the usual reshape
transform for Grad-CAM on ViTs).  The grid is the input size divided by the
patch size; the number of leading tokens is what is left over.  Both can be
given instead.

``auto`` picks the layout from the output's shape: 3-D is ``tokens``; 4-D is
``nhwc`` when only its last dimension has the number of channels the head
reads, otherwise ``nchw``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LAYOUTS", "FeatureLayout", "ResolvedLayout"]

LAYOUTS = ("auto", "nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class ResolvedLayout:
    """The layout of one forward's activation, ready to convert."""
    kind: str                      # "nchw" | "nhwc" | "tokens"
    num_prefix_tokens: int = 0
    grid: tuple[int, int] | None = None

    def to_nchw(self, tensor: torch.Tensor) -> torch.Tensor:
        """The activation (or its gradient) as ``[B, K, h, w]``; a view where
        possible, so gradients taken on the original line up with it."""
        if self.kind == "nchw":
            return tensor
        if self.kind == "nhwc":
            return tensor.permute(0, 3, 1, 2)
        h, w = self.grid
        patches = tensor[:, self.num_prefix_tokens:, :]
        return patches.reshape(tensor.shape[0], h, w, tensor.shape[2]).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class FeatureLayout:
    """The declared layout of a CAM layer (``auto`` unless the user knows better)."""
    kind: str = "auto"
    num_prefix_tokens: int | None = None   # tokens before the patch tokens
    grid: tuple[int, int] | None = None    # patch grid (h, w)
    patch_size: int | None = None          # used to infer the grid from the input size

    def __post_init__(self):
        if self.kind not in LAYOUTS:
            raise ValueError(f"unknown layout {self.kind!r}; choose one of {', '.join(LAYOUTS)}")

    def resolve(self, shape: tuple[int, ...], input_size: tuple[int, int],
                channels: int | None, layer: str) -> ResolvedLayout:
        """The layout of an activation of ``shape`` for an input of
        ``input_size`` (H, W); ``channels``: what the head reads, if known."""
        kind = self.kind
        if kind == "auto":
            if len(shape) == 3:
                kind = "tokens"
            elif len(shape) == 4:
                last_only = channels is not None and shape[3] == channels != shape[1]
                kind = "nhwc" if last_only else "nchw"
        expected = 3 if kind == "tokens" else 4
        if len(shape) != expected:
            raise ValueError(f"the CAM layer {layer!r} outputs a tensor of shape "
                             f"{tuple(shape)}; a CAM layer must output [B, K, h, w], "
                             f"[B, h, w, K] or tokens [B, N, D]")
        if kind != "tokens":
            return ResolvedLayout(kind)
        return ResolvedLayout("tokens", *self._token_grid(shape[1], input_size, layer))

    def _token_grid(self, tokens: int, input_size: tuple[int, int],
                    layer: str) -> tuple[int, tuple[int, int]]:
        grid = self.grid
        if grid is None and self.patch_size:
            grid = (input_size[0] // self.patch_size, input_size[1] // self.patch_size)
        if grid is None:
            grid = _square_grid(tokens, self.num_prefix_tokens)
        if grid is None:
            raise ValueError(f"cannot tell the patch grid of the {tokens} tokens of "
                             f"{layer!r}: give the grid (grid=(h, w)) or the patch size")
        prefix = self.num_prefix_tokens
        if prefix is None:
            prefix = tokens - grid[0] * grid[1]
        if prefix < 0 or prefix + grid[0] * grid[1] != tokens:
            raise ValueError(f"{layer!r} outputs {tokens} tokens, which is not "
                             f"{prefix if prefix >= 0 else '?'} leading tokens plus a "
                             f"{grid[0]}x{grid[1]} patch grid: give grid=(h, w) and "
                             f"num_prefix_tokens")
        return prefix, tuple(grid)


def _square_grid(tokens: int, prefix: int | None) -> tuple[int, int] | None:
    """The square grid left after a few leading tokens (class, distillation,
    registers), when no patch size is known."""
    for lead in ([prefix] if prefix is not None else range(0, 9)):
        side = math.isqrt(max(tokens - lead, 0))
        if side > 0 and side * side == tokens - lead:
            return side, side
    return None

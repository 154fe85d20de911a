"""LeGrad (Bousselham et al., 2024) for the vision transformers a CAMModel
takes: torchvision's VisionTransformer and timm's (DeiT), as torchcam 0.5.0
computes it (docs/method.md).

For each chosen block ``l`` the block's tokens are read as the model reads its
last ones -- mean over all tokens, the final norm, the branch's head -- giving
a class score ``s^l``; LeGrad differentiates ``s^l`` with respect to the
block's post-softmax attention probabilities, keeps the positive part,
averages it over heads and queries, drops the prefix (class) keys and averages
the patch maps over the blocks.  The attention is recomputed from the block's
own projections so its probabilities are a tensor in the graph (timm's fused
attention never forms them).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams.base import CAMInputs, CAMMethod
from wsol.cams.capture import full_precision
from wsol.model import CAMModel

__all__ = ["LeGrad", "transformer_parts"]

Tensor = torch.Tensor

NOT_A_VIT = ("legrad reads the attention of a vision transformer (torchvision "
             "VisionTransformer or timm ViT/DeiT); for this CNN use gradcam, layercam or another "
             "method")


def transformer_parts(model: CAMModel) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the blocks in order, the norms applied to the last tokens before the
    head) of the transformer inside ``model``; ValueError for other models."""
    for module in model.model.modules():
        encoder = getattr(module, "encoder", None)
        if encoder is not None and hasattr(encoder, "layers") and hasattr(encoder, "ln"):
            blocks = [b for b in encoder.layers if isinstance(
                getattr(b, "self_attention", None), nn.MultiheadAttention)]
            if blocks:
                return blocks, [encoder.ln]
        blocks = getattr(module, "blocks", None)
        if blocks is not None and hasattr(module, "norm"):
            blocks = [b for b in blocks if hasattr(getattr(b, "attn", None), "qkv")]
            if blocks:
                norms = [module.norm] + ([module.fc_norm] if hasattr(module, "fc_norm") else [])
                return blocks, norms
    raise ValueError(NOT_A_VIT)


def _attention_of(block: nn.Module) -> nn.Module:
    return block.self_attention if hasattr(block, "self_attention") else block.attn


def _multihead(module: nn.MultiheadAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """torch's MultiheadAttention on batch-first ``x`` (self-attention), with
    the probabilities: (output, attention [B, heads, N, N])."""
    batch, tokens, dim = x.shape
    heads = module.num_heads
    q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, tokens, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    attention = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
    out = (attention @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return module.out_proj(out), attention


def _timm_attention(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """timm's Attention without the fused kernel: (output, attention)."""
    batch, tokens, dim = x.shape
    heads = module.num_heads
    head_dim = getattr(module, "head_dim", dim // heads)
    qkv = module.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    attention = ((q * module.scale) @ k.transpose(-2, -1)).softmax(-1)
    out = (module.attn_drop(attention) @ v).transpose(1, 2).reshape(batch, tokens,
                                                                    heads * head_dim)
    if hasattr(module, "norm"):
        out = module.norm(out)
    if getattr(module, "gate", None) is not None:
        out = out * module.gate(x).sigmoid()
    return module.proj_drop(module.proj(out)), attention


class LeGrad(CAMMethod):
    """LeGrad (Bousselham et al., 2024): each block's score's positive attention gradients.
    map = mean_l mean_heads,queries ReLU(ds^l / dP^l) over the patch keys.

    ``layers``: how many of the last blocks (torchcam needs them named; its
    documented use takes the last 4), or block indices.  The target is the
    branch's raw logit through the branch's head (``fc2`` on the sigmoid
    branch); the gradients are already rectified, so there is nothing to
    clamp.  Its own forward and backward: it differentiates attention
    probabilities of several blocks, which the shared pass does not record."""
    name = "legrad"
    uses_gradients = True
    token_models_only = True

    def __init__(self, layers: int | tuple[int, ...] = 4):
        if isinstance(layers, int) and layers < 1:
            raise ValueError(f"LeGrad needs layers >= 1, got {layers}")
        self.layers = layers

    def misfit(self, model: CAMModel) -> str | None:
        try:
            self._chosen(transformer_parts(model)[0])
        except ValueError as error:
            return str(error)
        return None

    def _chosen(self, blocks: list[nn.Module]) -> list[nn.Module]:
        if isinstance(self.layers, int):
            return blocks[-self.layers:]
        try:
            return [blocks[i] for i in self.layers]
        except IndexError:
            raise ValueError(f"LeGrad layers {self.layers} out of range: the model has "
                             f"{len(blocks)} blocks") from None

    def prepare(self, inputs: CAMInputs) -> None:
        model = inputs.model
        blocks, norms = transformer_parts(model)
        chosen = self._chosen(blocks)
        attention: dict[int, Tensor] = {}
        tokens: dict[int, Tensor] = {}
        with self._recording(chosen, attention, tokens):
            model(inputs.images.detach())
            head = model.branch_head(inputs.branch)
            with _branches_off(model):
                scores = []
                for i in range(len(chosen)):
                    pooled = tokens[i].mean(1)
                    for norm in norms:
                        pooled = norm(pooled)
                    logits = full_precision(head(pooled))
                    scores.append(logits.gather(1, inputs.targets[:, None]).sum())
        layout = model.resolve_layout(tokens[0].shape, inputs.images.shape[-2:])
        maps = []
        for i, score in enumerate(scores):
            (grad,) = torch.autograd.grad(score, attention[i], retain_graph=i < len(scores) - 1)
            relevance = full_precision(grad).clamp_min(0).mean((1, 2))
            relevance = relevance[:, layout.num_prefix_tokens:]
            maps.append(relevance.reshape(relevance.shape[0], *layout.grid))
        inputs.extra[id(self)] = torch.stack(maps).mean(0)

    def raw_map(self, inputs):
        return inputs.extra[id(self)]

    @staticmethod
    @contextmanager
    def _recording(chosen: list[nn.Module], attention: dict, tokens: dict) -> Iterator[None]:
        """Grad on from the first chosen block; each chosen block's attention
        recomputed with its probabilities kept, and its output tokens kept."""
        grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(False)

        def start(module, args):
            torch.set_grad_enabled(True)
            return (args[0].detach().requires_grad_(True), *args[1:])

        def attend(index):
            def hook(module, args, kwargs, output):
                x = args[0] if args else kwargs["query"]
                if isinstance(module, nn.MultiheadAttention):
                    out, probabilities = _multihead(module, x)
                    replaced = (out, None)
                else:
                    replaced, probabilities = _timm_attention(module, x)
                attention[index] = probabilities
                return replaced
            return hook

        def keep(index):
            def hook(module, args, output):
                tokens[index] = output
            return hook

        handles = [chosen[0].register_forward_pre_hook(start)]
        for i, block in enumerate(chosen):
            handles.append(_attention_of(block).register_forward_hook(attend(i),
                                                                      with_kwargs=True))
            handles.append(block.register_forward_hook(keep(i)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            torch.set_grad_enabled(grad_mode)


@contextmanager
def _branches_off(model: CAMModel) -> Iterator[None]:
    """Call the head alone: the branches ride on its forward hook."""
    model._branch_enabled = False
    try:
        yield
    finally:
        model._branch_enabled = True

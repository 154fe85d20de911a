"""Every requested CAM method from one batched pass, on one or several
branches of a :class:`CAMModel` (docs/method.md).

The pass: one forward, recording the CAM layer's activations (and the other
layers some methods read); one backward per branch and target set -- through
the head only unless a method needs more -- shared by all gradient methods;
then each method's own passes (:meth:`CAMMethod.prepare`) and its map.
Maps are computed in torch, batched, on the model's device, in float32 even
under an outer autocast.  Call ``model.eval()`` first: a model
in training mode would update BatchNorm statistics and apply dropout during
the extra passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from wsol.cams.base import CAMInputs, CAMMethod
from wsol.cams.capture import PassNeeds, SharedPass, full_precision
from wsol.cams.check import verify_cam_model
from wsol.cams.registry import resolve_methods
from wsol.branches import BRANCHES, branch_rule, check_branch, clamp_rule, clamps_map_weights
from wsol.model import CAMModel

__all__ = ["CAMOutput", "compute_cams", "compute_cams_per_branch",
           "compute_cams_for_target_sets"]

Tensor = torch.Tensor
Methods = str | CAMMethod | Sequence[str | CAMMethod]


@dataclass
class CAMOutput:
    maps: dict[str, Tensor]        # method -> raw maps [B, h, w], float32, detached
    logits: Tensor                 # softmax-branch logits [B, C] of the same forward
    logits_sigmoid: Tensor | None  # sigmoid-branch logits [B, C] or None
    targets: Tensor | None = None  # [B] the classes the maps explain
    branch: str = "softmax"        # the branch the maps come from
    logits_recam: Tensor | None = None  # recam-branch logits [B, C] or None

    def branch_logits(self, branch: str) -> Tensor:
        """The logits of any branch from the same forward (wsol.branches)."""
        found = getattr(self, branch_rule(branch).logits_key)
        if found is None:
            raise ValueError(f"the model has no {branch} branch")
        return found


def compute_cams(model: CAMModel, images: Tensor, targets: Tensor | None = None,
                 methods: Methods = ("cam",), branch: str | None = None,
                 clamp: bool = True) -> CAMOutput:
    """Raw CAM maps of ``images`` for each method, from one forward.

    Args:
        model: a :class:`CAMModel` on the images' device, in eval mode; it may
            be frozen and the call may sit inside ``torch.no_grad()``.
        images: [B, 3, H, W] as the model takes them (normalised).
        targets: [B] classes to explain; None -> the softmax head's top-1.
        methods: names (:data:`CAM_METHODS`, with their default settings), a
            comma-separated string, "all" (the methods that fit the model), or
            method instances with settings of their own
            (``SmoothGradCAMPlusPlus(samples=16)``, ``ScoreCAM(topk=64)``).
        branch: "softmax", "sigmoid" or "recam"; None -> "sigmoid" for a dual-branch
            model, "softmax" otherwise.
        clamp: on the sigmoid branch, clamp the weights at zero (the method);
            False for ablations.  Softmax-branch maps are never clamped.

    Cost: one forward; plus one backward through the head only (the layers
    after the CAM layer) when a gradient method is asked for, shared by all of
    them -- from the earliest layer RefineCAM reads, or from the input for
    FullGrad; Finer-CAM adds a backward of its own target and ShapleyCAM a
    second-order one through the same graph; plus each method's own passes:
    ``samples`` forward/backward pairs for Smooth Grad-CAM++, one forward per
    scored channel (chunks of ``batch_size``) for Score-CAM, ``samples`` times
    that for SS-CAM and IS-CAM, one run of the layers after the CAM layer per
    channel for AblationCAM, a forward and backward from its first block for
    LeGrad (docs/PERFORMANCE.md).  The returned logits come from the first
    forward.  The first call on a model also checks
    it (:func:`wsol.cams.verify_cam_model`).
    """
    if branch is None:
        branch = "sigmoid" if model.is_dual else "softmax"
    return compute_cams_per_branch(model, images, targets, methods, [branch], clamp)[branch]


def compute_cams_per_branch(model: CAMModel, images: Tensor, targets: Tensor | None,
                            methods: Methods, branches: Sequence[str],
                            clamp: bool = True) -> dict[str, CAMOutput]:
    """:func:`compute_cams` for several branches from one shared forward:
    ``{branch: CAMOutput}``.  The branches share the forward and the CAM
    activations; each adds one backward through the head (and its methods'
    own passes).  Same maps as one :func:`compute_cams` call per branch, at
    the cost of one forward."""
    sets = None if targets is None else torch.as_tensor(targets).view(1, -1)
    return {branch: outs[0] for branch, outs in
            compute_cams_for_target_sets(model, images, sets, methods, branches, clamp).items()}


def compute_cams_for_target_sets(model: CAMModel, images: Tensor, target_sets: Tensor | None,
                                 methods: Methods, branches: Sequence[str],
                                 clamp: bool = True) -> dict[str, list[CAMOutput]]:
    """Maps for ``J`` target sets (``[J, B]``, e.g. each image's j-th class of
    multi-label data; None: the softmax head's top-1) from one forward:
    ``{branch: [CAMOutput of each set]}``; one backward through the head per
    branch and set."""
    chosen = resolve_methods(methods, fitting=model)
    branches = list(dict.fromkeys(branches))
    if not branches:
        raise ValueError(f"no branch given; choose from {BRANCHES}")
    for branch in branches:
        check_branch(branch, model.is_dual, model.has_recam)
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    if torch.is_inference_mode_enabled():
        # Inference tensors cannot take part in autograd: step out of it.
        with torch.inference_mode(False):
            images = images.clone()
            target_sets = None if target_sets is None else target_sets.clone()
            verify_cam_model(model, images, chosen, branches)
            return _compute(model, images, target_sets, chosen, branches, clamp)
    verify_cam_model(model, images, chosen, branches)
    return _compute(model, images, target_sets, chosen, branches, clamp)


def _compute(model: CAMModel, images: Tensor, target_sets: Tensor | None,
             chosen: list[CAMMethod], branches: list[str],
             clamp: bool) -> dict[str, list[CAMOutput]]:
    images = images.detach()
    if target_sets is not None:
        target_sets = torch.as_tensor(target_sets, device=images.device).long()
        target_sets = target_sets.view(target_sets.shape[0] if target_sets.dim() > 1 else 1, -1)
        if target_sets.shape[1] != images.shape[0]:
            raise ValueError(f"{target_sets.shape[1]} targets for {images.shape[0]} images")
        if target_sets.numel():
            bad = (target_sets.min() < 0) | (target_sets.max() >= model.num_classes)
            if target_sets.is_cuda:
                torch._assert_async(~bad)  # fails on the GPU without making the host wait
            elif bool(bad):
                raise ValueError(f"targets must lie in [0, {model.num_classes})")
    needs = PassNeeds()
    for method in chosen:
        needs = needs | method.pass_needs(model)
    # A network whose maps depend on the class (ACoL's erasing) is told the
    # one set of classes explained; otherwise it uses its top-1, as they are.
    labels = target_sets[0] if target_sets is not None and len(target_sets) == 1 else None
    shared = SharedPass(model, images, needs, labels)
    if target_sets is None:
        target_sets = shared.outputs["logits"].detach().argmax(1)[None]
    logits = {key: None if value is None else full_precision(value.detach())
              for key, value in shared.outputs.items() if key != "aux"}
    results: dict[str, list[CAMOutput]] = {}
    for branch in branches:
        # What the branch clamps (wsol.branches); ReCAM's clamped factors are
        # in its class weights already.
        clamp_here = clamps_map_weights(clamp_rule(branch, clamp, model.recam_clamp))
        results[branch] = []
        for targets in target_sets:
            grads = shared.gradients(shared.target_scores(branch, targets),
                                     create_graph=needs.create_graph) if needs.graph else None
            inputs = CAMInputs(model=model, images=images, targets=targets, branch=branch,
                               clamp=clamp_here, activations=shared.activations,
                               gradients=None if grads is None else grads.cam, grads=grads,
                               shared=shared)
            for method in chosen:  # their own passes, under the caller's autocast ...
                method.prepare(inputs)
            # ... the maps are formed in float32 whatever it is.
            with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
                maps = {m.name: m.raw_map(inputs).detach().float() for m in chosen}
            results[branch].append(CAMOutput(
                maps=maps, logits=logits["logits"], logits_sigmoid=logits["logits_sigmoid"],
                logits_recam=logits.get("logits_recam"), targets=targets, branch=branch))
    return results

"""A classifier with a known CAM layer and head, and the sigmoid branch beside it.

:class:`CAMModel` wraps a classifier given two module names: its CAM layer
(activations ``A``) and its classification head (whatever maps the pooled
features or tokens to logits: a Linear, a 1x1 conv before GAP, an MLP, a
LayerNorm + Linear, a Linear on the class token).  ``add_sigmoid_branch``
puts a second head of the same shape beside the first (the sigmoid branch,
``fc2``): a forward hook on the original head runs the branch on the same
input and appends its outputs as extra classes, so whatever follows the head
(pooling, flatten, a dict) carries both branches and the model's own
``forward`` needs no change.  The logits are then split back into the softmax
and sigmoid branches.  :func:`wsol.cams.verify_cam_model` checks on a real
forward that this holds for the model at hand; the method's own rules
(initialisation, loss, clamp) are in :mod:`wsol.dual_branch`.

Checkpoints name the branch as the method's public code does for each
network (``fc2``, ``SPG_A4_2``, ``classifier_2``, ``head2``:
``sigmoid_branch``); :meth:`CAMModel.public_name` gives those names.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.heads import LogitsExtractor, class_dim, class_weights, head_channels, head_classes
from wsol.layouts import FeatureLayout, ResolvedLayout
from wsol.branches import BRANCHES
from wsol.dual_branch import SIGMOID_BRANCH, clamp_weights, normal_branch_init
from wsol.recam import new_reactivation_head, recam_class_weights

__all__ = ["CAMModel", "FROZEN_MODES"]

FROZEN_MODES = ("eval", "public_code")


class CAMModel(nn.Module):
    """A classifier with a known CAM layer and head, optionally dual-branch.

    ``forward(x, labels=None)`` returns ``{"logits": softmax-branch logits,
    "logits_sigmoid": sigmoid-branch logits or None}``, and ``"aux"``: the
    other entries of a model that returns a dict (what a WSOL method's loss
    or class map reads, :mod:`wsol.wsol_networks`).  ``labels`` reach models
    whose ``forward`` takes them (ACoL and SPG: their training and maps depend
    on the class).

    Keyword options: ``layout`` of the CAM layer (``auto``, ``nchw``,
    ``nhwc``, ``tokens``; see :mod:`wsol.layouts`) with ``num_prefix_tokens``,
    ``grid`` and ``patch_size`` for token layers (inferred when not given);
    ``output``: where the logits are in the model's output (a dict key, a
    tuple index or a callable; default: found automatically);
    ``sigmoid_branch``: the branch's name in checkpoints; ``branch_init``:
    the ``random`` initialisation of the branch.
    """

    def __init__(self, model: nn.Module, feature_layer: str, head: str,
                 architecture: str = "custom", *, layout: str = "auto",
                 num_prefix_tokens: int | None = None, grid: tuple[int, int] | None = None,
                 patch_size: int | None = None,
                 output: str | int | Callable[[Any], torch.Tensor] | None = None,
                 sigmoid_branch: str = SIGMOID_BRANCH,
                 branch_init: Callable[[nn.Module], None] | None = None):
        super().__init__()
        self.model = model
        self.architecture = architecture
        self.feature_layer_name = feature_layer
        self.head_name = head
        modules = dict(model.named_modules())
        for kind, name in (("CAM layer", feature_layer), ("head", head)):
            if name not in modules or not name:
                known = ", ".join(n for n, m in model.named_children())
                raise ValueError(f"the {kind} {name!r} is not a module of "
                                 f"{type(model).__name__} (its top-level modules: {known})")
        head_module = modules[head]
        self.num_classes = head_classes(head_module, head)
        self.head_channels = head_channels(head_module)
        self._class_dim = class_dim(head_module)
        if patch_size is None:
            patch_size = _patch_size(model)
        self.layout = FeatureLayout(layout, num_prefix_tokens,
                                    tuple(grid) if grid is not None else None, patch_size)
        self.extract_logits = LogitsExtractor(output)
        self.takes_labels = "labels" in inspect.signature(model.forward).parameters
        self.sigmoid_branch_name = sigmoid_branch
        self.branch_init = branch_init
        self.fc2: nn.Module | None = None
        self.fc_re: nn.Linear | None = None   # ReCAM's re-activation head (wsol.recam)
        self.recam_map = "product"
        self.recam_clamp = "none"
        self._hook = None
        self.backbone_frozen = False
        self.frozen_mode = "eval"
        self._only_branch_trains = False  # every trainable parameter is in fc2
        self._grad_from_head = False      # set during a branch-only training forward
        self._branch_enabled = True       # off only while checking the model
        self.frozen_bn = False            # BatchNorm statistics fixed while training (ReCAM)
        self.verified: dict = {}          # wsol.cams.verify_cam_model's cache

    # -- structure -------------------------------------------------------
    @property
    def feature_module(self) -> nn.Module:
        return self.model.get_submodule(self.feature_layer_name)

    @property
    def head_module(self) -> nn.Module:
        return self.model.get_submodule(self.head_name)

    @property
    def is_dual(self) -> bool:
        return self.fc2 is not None

    def branch_head(self, branch: str) -> nn.Module:
        if branch not in BRANCHES or branch == "recam":
            raise ValueError(f"unknown branch {branch!r}; choose one of {BRANCHES[:2]} "
                             f"(the recam branch is computed from them and fc_re)")
        if branch == "sigmoid":
            if self.fc2 is None:
                raise ValueError("this model has no sigmoid branch: fine-tune one with "
                                 "--model_structure b2 or use --cam_branch softmax")
            return self.fc2
        return self.head_module

    def class_weights(self, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        """CAM's class weights of a branch, ``(W [C, K], b [C])``; an error
        (:class:`wsol.heads.HeadNotLinear`) for a head that has none."""
        if branch == "recam":
            weight = self.recam_weights().detach()
            return weight, torch.zeros(weight.shape[0], device=weight.device)
        name = self.head_name if branch == "softmax" else self.sigmoid_branch_name
        return class_weights(self.branch_head(branch), name)

    # -- ReCAM (wsol.recam) ------------------------------------------------
    @property
    def has_recam(self) -> bool:
        return self.fc_re is not None

    @property
    def mask_branch(self) -> str:
        """The BCE head whose CAM masks the features: the sigmoid branch of a
        dual-branch model, the model's head otherwise."""
        return "sigmoid" if self.is_dual else "softmax"

    def mask_weights(self, detach: bool = True) -> torch.Tensor:
        """W1 [C, K] of the BCE head, clamped at zero on the sigmoid branch
        (the method's maps); ``detach=False`` for training through it."""
        branch = self.mask_branch
        name = self.head_name if branch == "softmax" else self.sigmoid_branch_name
        weight, _ = class_weights(self.branch_head(branch), name, detach=detach)
        return clamp_weights(weight) if branch == "sigmoid" else weight

    def recam_weights(self) -> torch.Tensor:
        """The ``recam`` branch's class weights [C, K] (wsol.recam)."""
        if self.fc_re is None:
            raise ValueError("this model has no re-activation head: train one with --recam "
                             "or drop the recam branch")
        return recam_class_weights(self.mask_weights(), self.fc_re.weight, self.recam_map,
                                   self.recam_clamp)

    def add_reactivation_head(self, seed: int = 0, map_weights: str = "product",
                              clamp: str = "none") -> "CAMModel":
        """Add ReCAM's re-activation head ``fc_re`` (and the ``recam`` branch)."""
        if self.fc_re is not None:
            raise ValueError("the model already has a re-activation head")
        weight = self.mask_weights()  # HeadNotLinear for a head without class weights
        self.fc_re = new_reactivation_head(weight.shape[1], weight.shape[0], seed).to(
            weight.device)
        self.set_recam_maps(map_weights, clamp)
        self._install_hook()
        return self

    def set_recam_maps(self, map_weights: str, clamp: str) -> None:
        recam_class_weights(torch.zeros(1, 1), torch.zeros(1, 1), map_weights, clamp)  # checks
        self.recam_map, self.recam_clamp = map_weights, clamp

    def _install_hook(self) -> None:
        if self._hook is None:
            self._hook = self.head_module.register_forward_hook(self._append_branches)

    def resolve_layout(self, shape: tuple[int, ...], input_size: tuple[int, int]
                       ) -> ResolvedLayout:
        return self.layout.resolve(tuple(shape), tuple(input_size), self.head_channels,
                                   self.feature_layer_name)

    # -- names as the public code writes them ------------------------------
    def public_name(self, name: str) -> str:
        """``model.features.0.weight`` -> ``features.0.weight``;
        ``fc2.weight`` -> ``<sigmoid_branch>.weight``."""
        if name.startswith("model."):
            return name[len("model."):]
        if name == SIGMOID_BRANCH or name.startswith(SIGMOID_BRANCH + "."):
            return self.sigmoid_branch_name + name[len(SIGMOID_BRANCH):]
        return name

    def _selects(self, prefix: str, name: str, public: str) -> bool:
        """Whether an --unfreeze_layer prefix selects a parameter."""
        if prefix in (SIGMOID_BRANCH, self.sigmoid_branch_name):
            return name.startswith(SIGMOID_BRANCH + ".")
        return any(n == prefix or n.startswith(prefix + ".") for n in (public, name))

    # -- the sigmoid branch ----------------------------------------------
    def add_sigmoid_branch(self, init: Literal["clone", "random"] = "clone") -> "CAMModel":
        """Add the branch: a copy of the head (``clone``, the paper) or a fresh
        one initialised as the public code does (``random``)."""
        if self.fc2 is not None:
            raise ValueError("the model already has a sigmoid branch")
        if init not in ("clone", "random"):
            raise ValueError(f"unknown sigmoid-branch init {init!r}; use clone or random")
        branch = copy.deepcopy(self.head_module)
        if init == "random":
            (self.branch_init or normal_branch_init)(branch)
        for p in branch.parameters():
            p.requires_grad_(True)
        self.fc2 = branch
        self._install_hook()
        return self

    def _append_branches(self, module, inputs, output):
        """The head's forward hook: the sigmoid branch's outputs, then the
        recam branch's, appended as extra classes."""
        if not self._branch_enabled:
            return output
        if self._grad_from_head:
            # The backbone ran without autograd; record from here on (the
            # branch and whatever follows the head, e.g. a GAP after a conv head).
            torch.set_grad_enabled(True)
        parts = [output]
        if self.fc2 is not None:
            parts.append(self.fc2(*inputs))
        if self.fc_re is not None:
            weight = self.recam_weights().detach().to(inputs[0].dtype)
            if self._class_dim == 1:  # a 1x1-conv head on the feature map
                parts.append(F.conv2d(inputs[0], weight[:, :, None, None]))
            else:
                parts.append(F.linear(inputs[0], weight))
        return torch.cat(parts, dim=self._class_dim)

    def freeze_backbone(self, trainable: tuple[str, ...] = (SIGMOID_BRANCH,),
                        mode: str = "eval") -> None:
        """Train only the parameters under the ``trainable`` prefixes (public
        names; ``fc2`` or the branch's own name mean the branch, ``all``
        everything).  ``mode`` ``eval`` keeps the frozen part in eval mode
        (BatchNorm statistics and dropout as trained); ``public_code``
        reproduces the method's public code: the frozen part follows the
        model's train/eval mode, BatchNorm normalises with batch statistics
        without updating its running ones, and dropout is active while the
        branch trains."""
        if mode not in FROZEN_MODES:
            raise ValueError(f"unknown frozen mode {mode!r}; choose one of {FROZEN_MODES}")
        if "all" in trainable:
            for p in self.parameters():
                p.requires_grad_(True)
            self.backbone_frozen = False
            self._only_branch_trains = False
            return
        names = {name: self.public_name(name) for name, _ in self.named_parameters()}
        for prefix in trainable:
            if not any(self._selects(prefix, n, names[n]) for n in names):
                example = next(iter(names.values()))
                raise ValueError(f"--unfreeze_layer {prefix!r} names no parameters; they are "
                                 f"named e.g. {example!r}, and the sigmoid branch is "
                                 f"{self.sigmoid_branch_name!r} (or fc2)")
        for name, p in self.named_parameters():
            p.requires_grad_(any(self._selects(prefix, name, names[name])
                                 for prefix in trainable))
        self.backbone_frozen = True
        self.frozen_mode = mode
        self._only_branch_trains = all(
            name.startswith((SIGMOID_BRANCH + ".", "fc_re."))
            for name, p in self.named_parameters() if p.requires_grad)
        if mode == "public_code":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.track_running_stats = False  # batch statistics, running ones untouched
        self.train(self.training)

    def train(self, mode: bool = True) -> "CAMModel":
        super().train(mode)
        if self.backbone_frozen and self.frozen_mode == "eval":
            self.model.eval()  # running statistics and dropout stay as trained
        elif mode and self.frozen_bn:
            for m in self.model.modules():  # ReCAM's FixedBatchNorm: statistics as loaded
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def drop_head_bias(self) -> "CAMModel":
        """A bias-free head (ReCAM's 1x1-conv classifier has none); call before
        adding branches, which copy the head."""
        if self.is_dual or self.has_recam:
            raise ValueError("drop the head's bias before adding branches")
        for m in self.head_module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias = None
        return self

    def freeze(self, prefixes: tuple[str, ...]) -> None:
        """Parameters under these prefixes (public names, e.g. ``conv1``,
        ``bn1``) never train: ReCAM keeps its stem frozen."""
        for prefix in prefixes:
            matched = [p for name, p in self.named_parameters()
                       if self._selects(prefix, name, self.public_name(name))]
            if not matched:
                raise ValueError(f"--freeze {prefix!r} names no parameters of this model")
            for p in matched:
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor | None]:
        if labels is not None and self.takes_labels:
            return self._forward(x, {"labels": labels})
        return self._forward(x, {})

    def _forward(self, x: torch.Tensor, kwargs: dict) -> dict[str, torch.Tensor | None]:
        if self.training and self._only_branch_trains and torch.is_grad_enabled():
            # Fine-tuning the branch alone: the frozen backbone runs with
            # autograd off (no graph, no saved activations); the head's hook
            # switches it back on.
            self._grad_from_head = True
            try:
                with torch.no_grad():
                    out = self.model(x, **kwargs)
            finally:
                self._grad_from_head = False
        else:
            out = self.model(x, **kwargs)
        logits = self.extract_logits(out)
        result = {"logits": logits, "logits_sigmoid": None}
        if isinstance(out, dict) and len(out) > 1:
            result["aux"] = {k: v for k, v in out.items() if v is not logits}
        if self.fc_re is not None:
            result["logits_recam"] = None
        branches = (self.fc2 is not None) + (self.fc_re is not None)
        if not branches or not self._branch_enabled:
            return result
        if logits.shape[-1] != (1 + branches) * self.num_classes:
            raise RuntimeError(
                f"the model's logits have {logits.shape[-1]} entries, not the "
                f"{(1 + branches) * self.num_classes} of its {1 + branches} branches: "
                f"something after the head {self.head_name!r} changes its output's shape; "
                f"give as head the module whose output the model returns")
        parts = list(logits.split(self.num_classes, dim=-1))
        result["logits"] = parts.pop(0)
        if self.fc2 is not None:
            result["logits_sigmoid"] = parts.pop(0)
        if self.fc_re is not None:
            result["logits_recam"] = parts.pop(0)
        return result


def _patch_size(model: nn.Module) -> int | None:
    """The patch size of a patch embedding (a square conv whose stride is its
    kernel), if the model has one."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and \
                m.kernel_size == m.stride and m.kernel_size[0] == m.kernel_size[1]:
            return m.kernel_size[0]
    return None

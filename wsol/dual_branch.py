"""The dual-branch sigmoid head, as one mechanism for any classifier.

:class:`CAMModel` wraps a classifier given two module names: its CAM feature
layer (activations ``A``) and its classification head (a ``Linear`` on
``GAP(A)`` or a 1x1 ``Conv2d`` on ``A`` followed by GAP).  ``add_sigmoid_branch``
puts a second head of the same shape beside the first (``fc2``): a forward hook
on the original head runs ``fc2`` on the same input and appends its outputs as
extra channels, so whatever follows the head (pooling, flatten) carries both
branches and the model's own ``forward`` needs no change.  The concatenated
logits are split back into the softmax and sigmoid branches.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn as nn

__all__ = ["CAMModel", "BRANCHES"]

BRANCHES = ("softmax", "sigmoid")
SIGMOID_BRANCH = "fc2"  # the public code's name, also used by --unfreeze_layer


class CAMModel(nn.Module):
    """A classifier with a known CAM layer and head, optionally dual-branch.

    ``forward`` returns ``{"logits": softmax-branch logits,
    "logits_sigmoid": sigmoid-branch logits or None}``.
    """

    def __init__(self, model: nn.Module, feature_layer: str, head: str,
                 architecture: str = "custom"):
        super().__init__()
        self.model = model
        self.architecture = architecture
        self.feature_layer_name = feature_layer
        self.head_name = head
        modules = dict(model.named_modules())
        for kind, name in (("feature layer", feature_layer), ("head", head)):
            if name not in modules:
                raise ValueError(f"{kind} {name!r} is not a module of {type(model).__name__}")
        head_module = modules[head]
        if isinstance(head_module, nn.Linear):
            self.num_classes = head_module.out_features
        elif isinstance(head_module, nn.Conv2d) and head_module.kernel_size == (1, 1):
            self.num_classes = head_module.out_channels
        else:
            raise ValueError(f"head {head!r} must be nn.Linear or a 1x1 nn.Conv2d, "
                             f"got {type(head_module).__name__}")
        self.fc2: nn.Module | None = None
        self._hook = None
        self.backbone_frozen = False
        self._only_branch_trains = False  # every trainable parameter is in fc2
        self._grad_from_head = False      # set during a branch-only training forward

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
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; choose one of {BRANCHES}")
        if branch == "sigmoid":
            if self.fc2 is None:
                raise ValueError("this model has no sigmoid branch: fine-tune one with "
                                 "--model_structure b2 or use --cam_branch softmax")
            return self.fc2
        return self.head_module

    def head_weight(self, branch: str) -> torch.Tensor:
        """Class weights of a branch as ``[num_classes, channels]``."""
        weight = self.branch_head(branch).weight
        return weight.reshape(weight.shape[0], -1)

    # -- the sigmoid branch ----------------------------------------------
    def add_sigmoid_branch(self, init: Literal["clone", "random"] = "clone") -> "CAMModel":
        """Add ``fc2``: a copy of the head (``clone``, the paper) or a fresh
        one with N(0, 0.01) weights and zero bias (``random``, the public code)."""
        if self.fc2 is not None:
            raise ValueError("the model already has a sigmoid branch")
        branch = copy.deepcopy(self.head_module)
        if init == "random":
            nn.init.normal_(branch.weight, 0.0, 0.01)
            if branch.bias is not None:
                nn.init.zeros_(branch.bias)
        elif init != "clone":
            raise ValueError(f"unknown sigmoid-branch init {init!r}; use clone or random")
        for p in branch.parameters():
            p.requires_grad_(True)
        self.fc2 = branch
        self._hook = self.head_module.register_forward_hook(self._append_sigmoid_branch)
        return self

    def _append_sigmoid_branch(self, module, inputs, output):
        if self._grad_from_head:
            # The backbone ran without autograd; record from here on (fc2 and
            # whatever follows the head, e.g. a GAP after a 1x1-conv head).
            torch.set_grad_enabled(True)
        return torch.cat([output, self.fc2(inputs[0])], dim=1)

    def freeze_backbone(self, trainable: tuple[str, ...] = (SIGMOID_BRANCH,)) -> None:
        """Train only the parameters whose names start with ``trainable``;
        the frozen part stays in eval mode (BatchNorm statistics unchanged)."""
        names = [name for name, _ in self.named_parameters()]
        for prefix in trainable:
            if not any(n == prefix or n.startswith(prefix + ".") for n in names):
                raise ValueError(f"--unfreeze_layer {prefix!r} names no parameters; "
                                 f"parameters start with e.g. {names[0]!r}, {SIGMOID_BRANCH!r}")
        for name, p in self.named_parameters():
            p.requires_grad_(any(name == t or name.startswith(t + ".") for t in trainable))
        self.backbone_frozen = True
        self._only_branch_trains = all(
            name.startswith(SIGMOID_BRANCH + ".")
            for name, p in self.named_parameters() if p.requires_grad)
        self.train(self.training)

    def train(self, mode: bool = True) -> "CAMModel":
        super().train(mode)
        if self.backbone_frozen:
            self.model.eval()  # running statistics and dropout stay as trained
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if self.training and self._only_branch_trains and torch.is_grad_enabled():
            # Fine-tuning the branch alone: the frozen backbone runs with
            # autograd off (no graph, no saved activations, like inference
            # mode, whose tensors could not enter the branch's graph); the
            # head's hook switches it back on.
            self._grad_from_head = True
            try:
                with torch.no_grad():
                    out = self.model(x)
            finally:
                self._grad_from_head = False
        else:
            out = self.model(x)
        if self.fc2 is None:
            return {"logits": out, "logits_sigmoid": None}
        logits, logits_sigmoid = out.split(self.num_classes, dim=1)
        return {"logits": logits, "logits_sigmoid": logits_sigmoid}

"""The evaluator protocol every metric follows, and the set of evaluators of a run.

As detectron2's ``DatasetEvaluator``: ``reset()``, ``process(batch)`` for
each batch of maps, ``evaluate()`` for the numbers (a results row's
entries), plus ``state()`` / ``load_state()`` / ``merge()`` so the
evaluators of several processes add up.  A batch (:class:`MapBatch` for
localization maps, :class:`SeedBatch` for seed maps) carries what any metric
may need; each evaluator takes what it uses.  wsolevaluation's names
(``accumulate(scoremap, image_id)``, ``compute()``) stay on the box and mask
evaluators.

:class:`EvaluatorSet` holds one evaluator of every metric that applies
(:data:`wsol.metrics.METRICS`) for each (method, branch) of a run, feeds
them, sums them across ranks and builds the results rows in one place.  A
new metric is one module with an :class:`Evaluator` and one line in
:data:`wsol.metrics.METRICS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from wsol.branches import BRANCH_RULES, clamp_rule
from wsol.data.datasets import DatasetInfo
from wsol.results import branch_row

__all__ = ["MapBatch", "SeedBatch", "FidelityInputs", "Evaluator", "EvalContext", "Metric",
           "EvaluatorSet"]

Tensor = torch.Tensor


@dataclass
class FidelityInputs:
    """What the fidelity protocol scores for one batch (docs/protocol.md)."""
    maps: Tensor          # [B, H, W] normalised maps of ``classes`` at the evaluation size
    classes: Tensor       # [B] the classes scored
    logits: Tensor        # [B, C] the full images' logits that the protocol reads
    key: str              # the model output that scores masked images (a branch's logits)


@dataclass
class MapBatch:
    """A batch of localization maps of one (method, branch)."""
    method: str
    branch: str
    maps: Tensor | np.ndarray      # [B, H, W] at the evaluation size
    image_ids: list[str]
    corrects: Sequence[bool] | Tensor | None = None  # the softmax head's top-1 is right
    normalized: bool = False       # True: float64 maps in [0, 1] (saved maps, one by one
                                   # as wsolevaluation scores them); False: raw maps
    images: Tensor | None = None   # the network's inputs
    fidelity: FidelityInputs | None = None


@dataclass
class SeedBatch:
    """The seed maps of one image for one (method, branch)."""
    method: str
    branch: str
    image_id: str
    maps: np.ndarray               # [K, H, W] in [0, 1], at the mask's size
    keys: Sequence[int]            # the K ground-truth classes, ascending


class Evaluator:
    """One metric of one (method, branch)."""

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, batch: MapBatch | SeedBatch) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """The numbers, as entries of a results row."""
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError

    def merge(self, other: "Evaluator") -> None:
        """Add another evaluator's state (same settings) to this one's."""
        mine, theirs = self.state(), other.state()
        self.load_state({k: mine[k] + theirs[k] for k in mine})


@dataclass
class EvalContext:
    """What the evaluators of a run are built from (``Metric.build``)."""
    dataset: DatasetInfo
    split: str
    metadata: dict
    mask_folder: str
    num_classes: int
    thresholds: Sequence[float]            # the CAM threshold list
    iou_threshold_list: Sequence[int] = (30, 50, 70)
    multi_contour_eval: bool = True
    loc_threshold: float = 0.2
    first_box_only: bool = False
    box_threads: int = 0
    seed_threshold: float = 0.21
    fidelity: bool = False
    fidelity_steps: int = 0
    fidelity_scorer: Callable | None = None   # masked images -> log-probabilities (a model)
    executor: Any = None                      # threads shared by the box evaluators
    resize_length: int = 224
    ground_truth: Any = None                  # wsol.data.metadata.GroundTruth, read once
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    name: str
    applies: Callable[[EvalContext], bool]
    build: Callable[[EvalContext], Evaluator]


class EvaluatorSet:
    """Every metric that applies, for every (method, branch) of a run."""

    def __init__(self, metrics: Sequence[Metric], context: EvalContext,
                 pairs: Sequence[tuple[str, str]], rules: Mapping[str, str] | None = None):
        """``rules``: what each branch's maps clamp (wsol.branches.clamp_rule;
        default: the branches' defaults)."""
        self.context = context
        self.pairs = list(pairs)
        self.metrics = [m for m in metrics if m.applies(context)]
        rules = dict(rules or {})
        self.rules = {b: rules.get(b) or _default_rule(b) for _, b in self.pairs}
        self.evaluators: dict[tuple[str, str], dict[str, Evaluator]] = {
            pair: {m.name: m.build(context) for m in self.metrics} for pair in self.pairs}

    def has(self, name: str) -> bool:
        return any(m.name == name for m in self.metrics)

    def reset(self) -> None:
        for evaluators in self.evaluators.values():
            for evaluator in evaluators.values():
                evaluator.reset()

    def process(self, batch: MapBatch | SeedBatch) -> None:
        for evaluator in self.evaluators[(batch.method, batch.branch)].values():
            evaluator.process(batch)

    def all(self) -> list[Evaluator]:
        return [e for evaluators in self.evaluators.values() for e in evaluators.values()]

    def synchronize(self, reduce: Callable[[dict], dict]) -> None:
        """Replace every state by ``reduce(state)`` (the sum over ranks)."""
        for evaluator in self.all():
            evaluator.load_state(reduce(evaluator.state()))

    def rows(self) -> list[dict]:
        """One results row per (method, branch): the branch's rules, then
        every metric's numbers."""
        rows = []
        for (method, branch), evaluators in self.evaluators.items():
            row = branch_row(method, branch, self.rules[branch])
            for evaluator in evaluators.values():
                row.update(evaluator.evaluate())
            rows.append(row)
        return rows


def _default_rule(branch: str) -> str:
    """A branch's default clamp rule; "none" for what is not a branch (a
    folder of maps of another tool)."""
    return clamp_rule(branch) if branch in BRANCH_RULES else "none"

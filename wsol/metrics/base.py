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
    correct: bool | None = None    # the softmax head's top class is one of the image's


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

    def bootstrap_samples(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The metrics of each resample of the images (``weights``:
        ``[R, images]``, how often each image of the split was drawn;
        wsol.metrics.bootstrap); an evaluator that keeps no per-image results
        has none."""
        return {}


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
    fidelity_road: bool = False
    fidelity_scorer: Callable | None = None   # masked images -> log-probabilities (a model)
    executor: Any = None                      # threads shared by the box evaluators
    resize_length: int = 224
    ground_truth: Any = None                  # wsol.data.metadata.GroundTruth, read once
    image_ids: Sequence[str] = ()             # the split's images, in metadata order
    bootstrap: int = 0                        # resamples of the images (0: none)
    seed: int = 0                             # of the resamples
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    name: str
    applies: Callable[[EvalContext], bool]
    build: Callable[[EvalContext], Evaluator]


class EvaluatorSet:
    """Every metric that applies, for every (method, branch) of a run; with
    ``context.bootstrap`` resamples, the interval of every number of every row
    and the paired differences between rows (wsol.metrics.bootstrap)."""

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
        self._index = ({image_id: i for i, image_id in enumerate(context.image_ids)}
                       if context.bootstrap > 0 else {})
        # Per image: seen, the softmax head's top-1 right (Top-1 Cls of each resample).
        self.verdicts = np.zeros((len(self._index), 2), np.uint8)
        self.verdicts_known = False  # some batch said whether its top-1 was right
        self.samples: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def has(self, name: str) -> bool:
        return any(m.name == name for m in self.metrics)

    def reset(self) -> None:
        for evaluators in self.evaluators.values():
            for evaluator in evaluators.values():
                evaluator.reset()
        self.verdicts[:] = 0
        self.verdicts_known = False
        self.samples = {}

    def process(self, batch: MapBatch | SeedBatch) -> None:
        for evaluator in self.evaluators[(batch.method, batch.branch)].values():
            evaluator.process(batch)
        if self._index:
            self._record_verdicts(batch)

    def _record_verdicts(self, batch: MapBatch | SeedBatch) -> None:
        if isinstance(batch, SeedBatch):
            ids, corrects = [batch.image_id], [batch.correct]
        else:
            ids = batch.image_ids
            corrects = batch.corrects
            if isinstance(corrects, torch.Tensor):
                corrects = corrects.detach().cpu().tolist()
            corrects = corrects if corrects is not None else [None] * len(ids)
        rows = [self._index[i] for i in ids]
        self.verdicts[rows, 0] = 1
        self.verdicts[rows, 1] = [c is True for c in corrects]
        self.verdicts_known = self.verdicts_known or any(c is not None for c in corrects)

    def all(self) -> list[Evaluator]:
        return [e for evaluators in self.evaluators.values() for e in evaluators.values()]

    def synchronize(self, reduce: Callable[[dict], dict]) -> None:
        """Replace every state by ``reduce(state)`` (the sum over ranks)."""
        for evaluator in self.all():
            evaluator.load_state(reduce(evaluator.state()))
        if self._index:
            merged = reduce({"verdicts": self.verdicts,
                             "known": np.asarray(int(self.verdicts_known))})
            self.verdicts = np.minimum(np.asarray(merged["verdicts"]), 1).astype(np.uint8)
            self.verdicts_known = bool(int(np.asarray(merged["known"])))

    def bootstrap(self) -> None:
        """Draw the run's resamples (seeded: the same for every row) and keep
        every metric's samples per row."""
        from wsol.metrics.bootstrap import proportion_samples, resample_weights
        context = self.context
        if context.bootstrap <= 0:
            return
        blocks: dict[tuple[str, str], dict[str, list]] = {pair: {} for pair in self.pairs}
        seen, correct = self.verdicts[:, 0], self.verdicts[:, 1]
        for weights in resample_weights(len(self._index), context.bootstrap, context.seed):
            top1 = proportion_samples(weights, correct, seen) if self.verdicts_known else None
            for pair, evaluators in self.evaluators.items():
                found = {} if top1 is None else {"Top-1 Cls": top1}
                for evaluator in evaluators.values():
                    found.update(evaluator.bootstrap_samples(weights))
                for metric, values in found.items():
                    blocks[pair].setdefault(metric, []).append(values)
        self.samples = {pair: {m: np.concatenate(v) for m, v in found.items()}
                        for pair, found in blocks.items()}

    def rows(self) -> list[dict]:
        """One results row per (method, branch): the branch's rules, then
        every metric's numbers (and, after :meth:`bootstrap`, their 95%
        intervals under ``ci95``)."""
        from wsol.metrics.bootstrap import interval
        rows = []
        for (method, branch), evaluators in self.evaluators.items():
            row = branch_row(method, branch, self.rules[branch])
            for evaluator in evaluators.values():
                row.update(evaluator.evaluate())
            if (method, branch) in self.samples:
                row["ci95"] = {metric: interval(values) for metric, values
                               in self.samples[(method, branch)].items()}
            rows.append(row)
        return rows

    def results(self, bootstrap: bool = True) -> dict:
        """The rows and, with the bootstrap (``bootstrap``: run it here; the
        main process of a torchrun job does), the paired differences and how
        the resamples were drawn."""
        if bootstrap:
            self.bootstrap()
        rows = self.rows()
        found: dict[str, Any] = {"rows": rows}
        if self.samples:
            found["paired"] = self.paired(rows)
            found["bootstrap"] = {"resamples": self.context.bootstrap, "seed": self.context.seed}
        return found

    def paired(self, rows: Sequence[dict]) -> list[dict]:
        """For every two rows that differ only in branch (the later branch of
        wsol.branches.BRANCHES minus the earlier: sigmoid - softmax, recam -
        sigmoid) or only in method (the later method minus the earlier), the
        difference of each metric both have, its interval over the same
        resamples and a two-sided p-value."""
        from wsol.metrics.bootstrap import paired_difference
        if not self.samples:
            return []
        by_pair = {(r["method"], r["branch"]): r for r in rows}
        order = list(self.pairs)
        out = []
        for i, a in enumerate(order):
            for b in order[:i]:
                if (a[0] == b[0]) == (a[1] == b[1]):
                    continue  # the same row, or differing in both
                if a[0] == b[0] and _branch_order(a[1]) < _branch_order(b[1]):
                    a_, b_ = b, a
                else:
                    a_, b_ = a, b
                for metric, values in self.samples[a_].items():
                    other = self.samples[b_].get(metric)
                    observed = (by_pair[a_].get(metric), by_pair[b_].get(metric))
                    if other is None or not all(isinstance(v, (int, float)) for v in observed):
                        continue
                    ci, p = paired_difference(values, other)
                    out.append({"metric": metric, "a": {"method": a_[0], "branch": a_[1]},
                                "b": {"method": b_[0], "branch": b_[1]},
                                "diff": float(observed[0]) - float(observed[1]), "ci95": ci,
                                "p": p})
        return out


def _branch_order(branch: str) -> int:
    order = list(BRANCH_RULES)
    return order.index(branch) if branch in order else -1


def _default_rule(branch: str) -> str:
    """A branch's default clamp rule; "none" for what is not a branch (a
    folder of maps of another tool)."""
    return clamp_rule(branch) if branch in BRANCH_RULES else "none"

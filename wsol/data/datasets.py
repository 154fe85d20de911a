"""The datasets by name, and what each is scored with, in one table.

Every place that needs a dataset's number of classes, its training split or
its metrics reads :data:`DATASETS`: the flags' defaults, the evaluation
pipeline (which evaluators run), ``evaluation.py`` (which metric an ``auto``
scoring means) and the check that a flag applies to the dataset at all.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetInfo", "DATASETS", "dataset_info", "SCORES"]

# What a split is scored with: boxes (MaxBoxAcc, MaxBoxAccV2, GT-known and
# Top-1 Loc), masks (PxAP) or segmentation seeds (seed mIoU, multi-label data).
SCORES = ("boxes", "masks", "seeds")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    scores: tuple[str, ...]           # of SCORES
    train_split: str = "train"
    description: str = ""

    @property
    def boxes(self) -> bool:
        return "boxes" in self.scores

    @property
    def masks(self) -> bool:
        return "masks" in self.scores

    @property
    def multi_label(self) -> bool:
        """Several classes per image, scored as segmentation seeds."""
        return "seeds" in self.scores


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("CUB", 200, ("boxes",), description="CUB-200-2011 birds"),
    DatasetInfo("ILSVRC", 1000, ("boxes",), description="ImageNet-1k"),
    DatasetInfo("OpenImages", 100, ("masks",), description="OpenImages30K (wsolevaluation)"),
    DatasetInfo("CARS", 196, ("boxes",), description="Stanford Cars"),
    DatasetInfo("SYNTH", 10, ("boxes", "masks"),
                description="built-in synthetic shapes, generated on first use"),
    # SBD's train_aug trains; seeds are scored on VOC's own train images.
    DatasetInfo("VOC2012", 20, ("seeds",), train_split="train_aug",
                description="PASCAL VOC 2012, multi-label"),
    DatasetInfo("SYNTH_ML", 8, ("seeds",),
                description="built-in multi-label shapes, generated on first use"),
)}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") \
            from None

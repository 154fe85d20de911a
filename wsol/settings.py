"""A run's settings: typed, frozen, one dataclass per concern.

``config.py`` builds a :class:`RunSettings` once from the parsed flags,
resolving defaults that depend on other flags and checking them; everything
after that reads the settings, never the flags.  ``config.json`` holds
:meth:`RunSettings.to_dict` as it is, and :func:`read_run_settings` reads it
back (``--eval_only``, ``--resume``, ``evaluation.py``, ``explain.py``).
Where the public code and this toolkit differ, the choice is in
:class:`wsol.replay.RunChoices` (``RunSettings.choices``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from wsol.data.datasets import DatasetInfo, dataset_info
from wsol.replay import RunChoices

__all__ = ["DataSettings", "ModelSettings", "OptimSettings", "WSOLSettings", "CAMSettings",
           "EvalSettings", "RuntimeSettings", "RunSettings", "read_run_settings", "CONFIG_NAME"]

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class DataSettings:
    """Where the images and metadata are, and how they are loaded."""
    dataset_name: str = "SYNTH"
    data_root: str = "dataset/"
    metadata_root: str = "metadata/"
    mask_root: str = "dataset/"
    train_split: str = "train"
    proxy_training_set: bool = False
    num_val_sample_per_class: int = 0
    skip_bad_images: bool = False
    resize_size: int = 256         # training images: resized to this square, then cropped
    crop_size: int = 224           # the network's input size
    train_augment: str = "wsol"    # "wsol" or ReCAM's "recam"
    resize_long: tuple[int, int] = (320, 640)
    workers: int = 4
    prefetch_factor: int = 4
    decode_on_device: bool = False

    @property
    def info(self) -> DatasetInfo:
        return dataset_info(self.dataset_name)

    @property
    def image_root(self) -> str:
        """Images of the dataset: ``<data_root>/<dataset>``."""
        return os.path.join(self.data_root, self.dataset_name)

    @property
    def mask_folder(self) -> str:
        """Masks of the dataset: ``<mask_root>/<dataset>``."""
        return os.path.join(self.mask_root, self.dataset_name)

    @property
    def metadata_folder(self) -> str:
        """Metadata of the dataset (one sub-folder per split)."""
        return os.path.join(self.metadata_root, self.dataset_name)

    def split_metadata(self, split: str) -> str:
        return os.path.join(self.metadata_folder, split)


@dataclass(frozen=True)
class ModelSettings:
    """The network, how it is initialised and which of it trains."""
    network: str = "resnet50"          # the network itself (vgg16_gradcam, not vgg16)
    num_classes: int = 10
    model_structure: str = "vanilla"   # "vanilla" or "b2" (with the sigmoid branch)
    large_feature_map: bool = False
    cam_layer: str | None = None       # None: the architecture's
    head: str | None = None
    head_bias: bool = True
    ft_ckpt: str | None = None
    pretrained: bool = False
    pretrained_path: str | None = None
    unfreeze: tuple[str, ...] = ("fc2",)  # what b2 fine-tuning trains (parameter prefixes)
    freeze: tuple[str, ...] = ()          # what never trains (ReCAM: conv1, bn1)
    frozen_bn: bool = False
    recam: bool = False
    recam_map: str = "product"
    recam_clamp: str = "none"
    recam_trains: str = "heads"

    @property
    def dual(self) -> bool:
        return self.model_structure == "b2"


@dataclass(frozen=True)
class OptimSettings:
    """The optimisation: SGD with wsolevaluation's groups and schedule."""
    epochs: int = 10
    batch_size: int = 32               # per process
    lr: float = 0.003
    lr_decay_frequency: int = 3
    lr_classifier_ratio: float = 10.0
    lr_groups: str = "published"       # "published" or ReCAM's "head"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_schedule: str = "step"          # "step" or ReCAM's "poly"
    poly_power: float = 0.9
    recam_weight: float = 1.0


@dataclass(frozen=True)
class WSOLSettings:
    """wsolevaluation's WSOL training method and its settings (its flags'
    names and defaults; wsol.wsol_methods, docs/method.md)."""
    method: str = "cam"                # --wsol_method
    has_grid_size: int = 4             # Hide-and-Seek: a cell's side in pixels
    has_drop_rate: float = 0.5
    acol_threshold: float = 0.7
    spg_threshold_1h: float = 0.7
    spg_threshold_1l: float = 0.01
    spg_threshold_2h: float = 0.5
    spg_threshold_2l: float = 0.05
    spg_threshold_3h: float = 0.7
    spg_threshold_3l: float = 0.1
    adl_drop_rate: float = 0.75
    adl_threshold: float = 0.9
    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0

    @property
    def spg_thresholds(self) -> tuple[tuple[float, float], ...]:
        """SPG's (high, low) pairs of its three masks."""
        return ((self.spg_threshold_1h, self.spg_threshold_1l),
                (self.spg_threshold_2h, self.spg_threshold_2l),
                (self.spg_threshold_3h, self.spg_threshold_3l))

    def network_options(self) -> dict[str, float]:
        """The settings a method's network takes (wsol.architectures.build_architecture)."""
        return {"acol_threshold": self.acol_threshold, "adl_drop_rate": self.adl_drop_rate,
                "adl_threshold": self.adl_threshold}


@dataclass(frozen=True)
class CAMSettings:
    """Which maps: methods (with their settings) and branches."""
    methods: tuple[str, ...] = ("cam", "gradcam")
    defaulted: bool = False            # --method left at its default: methods the model's
                                       # head cannot compute are dropped, with a note
    branches: tuple[str, ...] = ("softmax",)
    clamp: bool = True                 # the sigmoid branch's clamp (off: an ablation)
    smooth_samples: int = 8
    smooth_sigma: float = 0.15
    scorecam_batch_size: int = 32
    scorecam_topk: int | None = None
    method_options: tuple[str, ...] = ()  # --cam_option METHOD.SETTING=VALUE items

    def instances(self, generator=None) -> list:
        """The methods as instances with these settings (wsol.cams.registry);
        ``generator``: the noise of the random ones."""
        from wsol.cams import make_method, parse_method_options
        options = parse_method_options(self.method_options)
        fixed = {"smoothgradcam++": {"samples": self.smooth_samples, "sigma": self.smooth_sigma},
                 "scorecam": {"batch_size": self.scorecam_batch_size, "topk": self.scorecam_topk}}
        made = []
        for name in self.methods:
            typed = dict(fixed.get(name, {}))
            if generator is not None:
                typed["generator"] = generator
            made.append(make_method(name, options.get(name), **typed))
        return made


@dataclass(frozen=True)
class EvalSettings:
    """What is scored and how (the protocol's choices are in RunChoices)."""
    split: str = "test"
    checkpoint: str = "last"           # which checkpoint --eval_only scores
    cam_curve_interval: float = 0.001
    iou_threshold_list: tuple[int, ...] = (30, 50, 70)
    multi_contour_eval: bool = True
    loc_threshold: float = 0.2
    box_threads: int = 0
    fidelity: bool = False
    fidelity_steps: int = 0
    fidelity_road: bool = False
    tta_scales: tuple[float, ...] = ()
    seed_threshold: float = 0.21
    bootstrap: int = 1000              # resamples of the images for the intervals (0: none)
    save_scoremaps: bool = False
    save_overlays: int = 0
    plots: bool = False

    @property
    def box_column(self) -> str:
        """The table's box metric."""
        return "MaxBoxAccV2" if self.multi_contour_eval else "MaxBoxAcc"


@dataclass(frozen=True)
class RuntimeSettings:
    """Where the run lives, what it does, and on what."""
    experiment_name: str = "test_case"
    root: str = "train_log"
    eval_only: bool = False
    skip_eval: bool = False
    resume: bool = False
    override_cache: bool = False
    gpus: str | None = None
    dist_timeout: float = 300.0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    wandb: str = "off"
    wandb_name: str | None = None
    project: str = "dual-branch-cam"
    debug: bool = False                # log at DEBUG level

    @property
    def log_folder(self) -> str:
        """The experiment folder, ``<root>/<experiment_name>``."""
        return os.path.join(self.root, self.experiment_name)


_SECTIONS = {"data": DataSettings, "model": ModelSettings, "optim": OptimSettings,
             "wsol": WSOLSettings, "cams": CAMSettings, "evaluation": EvalSettings,
             "runtime": RuntimeSettings, "choices": RunChoices}


@dataclass(frozen=True)
class RunSettings:
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    wsol: WSOLSettings = field(default_factory=WSOLSettings)
    cams: CAMSettings = field(default_factory=CAMSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    choices: RunChoices = field(default_factory=RunChoices)
    replay: str = "none"
    argv: tuple[str, ...] = ()         # the command line, for the run's record
    notes: tuple[str, ...] = ()        # lines for the log once it is set up

    @property
    def log_folder(self) -> str:
        return self.runtime.log_folder

    def replace(self, **sections: Any) -> "RunSettings":
        """A copy with whole sections, or fields of sections given as dicts, replaced."""
        changes = {}
        for name, value in sections.items():
            if isinstance(value, Mapping):
                value = dataclasses.replace(getattr(self, name), **value)
            changes[name] = value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, one dict per section."""
        out = {name: _plain(dataclasses.asdict(getattr(self, name))) for name in _SECTIONS}
        out.update(replay=self.replay, argv=list(self.argv), notes=list(self.notes))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSettings":
        """The settings of :meth:`to_dict`; unknown fields are ignored (a newer
        version's), missing ones take their defaults (an older version's)."""
        sections = {name: _section(kind, data.get(name) or {})
                    for name, kind in _SECTIONS.items()}
        return cls(**sections, replay=str(data.get("replay", "none")),
                   argv=tuple(data.get("argv") or ()), notes=tuple(data.get("notes") or ()))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _section(kind: type, values: Mapping[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(kind)}
    kept = {}
    for name, value in values.items():
        if name not in fields:
            continue
        default = getattr(kind(), name)
        kept[name] = tuple(value) if isinstance(default, tuple) and value is not None else value
    return kind(**kept)


# config.json of earlier versions held the flags themselves, flat: where each
# section's fields were (flag name -> field, when they differ).
_FLAT_NAMES = {"model": {"network": "network", "unfreeze": "unfreeze_layers",
                         "freeze": "freeze_prefixes"},
               "wsol": {"method": "wsol_method"},
               "cams": {"methods": "methods", "branches": "cam_branches"},
               "evaluation": {"checkpoint": "eval_checkpoint_type", "tta_scales": "tta"}}


def _from_flat(data: Mapping[str, Any]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for name, kind in _SECTIONS.items():
        if name == "choices":
            sections[name] = data.get("choices") or {}
            continue
        renamed = _FLAT_NAMES.get(name, {})
        sections[name] = {f.name: data[renamed.get(f.name, f.name)]
                          for f in dataclasses.fields(kind)
                          if renamed.get(f.name, f.name) in data}
    if "no_clamp" in data:
        sections["cams"]["clamp"] = not data["no_clamp"]
    sections["replay"] = data.get("replay", "none")
    sections["argv"] = data.get("argv") or ()
    return sections


def read_run_settings(folder: str) -> RunSettings | None:
    """The settings an experiment folder's ``config.json`` records (this
    version's sections or an earlier version's flat flags); None without one
    or when it cannot be read."""
    path = os.path.join(folder, CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if not isinstance(data.get("model"), dict):
        data = _from_flat(data)
    try:
        return RunSettings.from_dict(data)
    except (TypeError, ValueError):
        return None

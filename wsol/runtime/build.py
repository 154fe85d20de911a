"""What a run is made of, from its settings: the model (initialised from
``--ft_ckpt``, ImageNet weights or the checkpoint to evaluate, with the
sigmoid branch and ReCAM's head where asked), the loaders' settings, and the
built-in datasets, generated the first time they are needed."""
from __future__ import annotations

import logging
import os

import torch

from wsol.architectures import ArchitectureSpec, build_cam_model
from wsol.data.loaders import LoaderSettings
from wsol.errors import UserError
from wsol.model import CAMModel
from wsol.runtime.checkpoint import (CheckpointError, find_pretrained, load_checkpoint_file,
                                     load_into_cam_model, load_pretrained)
from wsol.runtime.experiment import checkpoint_path
from wsol.settings import RunSettings

__all__ = ["build_model", "check_start_files", "loader_settings", "load_for_evaluation",
           "ensure_builtin_dataset", "preflight", "BuildError"]

log = logging.getLogger(__name__)


class BuildError(UserError):
    """The model cannot be built as the settings ask."""


def check_start_files(settings: RunSettings) -> None:
    """The files a training run starts from exist: checked before the
    experiment folder is made (a run scripts plan may name them before an
    earlier step writes them, so it is not a check of the flags)."""
    if settings.runtime.eval_only:
        return
    for flag, path in (("--ft_ckpt", settings.model.ft_ckpt),
                       ("--pretrained_path", settings.model.pretrained_path)):
        if path and not os.path.exists(path):
            raise BuildError(f"{flag} {path}: no such file (check the path)")


def build_model(settings: RunSettings) -> tuple[CAMModel, ArchitectureSpec]:
    """The network, initialised from --ft_ckpt (or ImageNet weights with
    --pretrained) unless it is evaluated, with the sigmoid branch added for b2
    and ReCAM's re-activation head with --recam; frozen as the run trains it."""
    m, choices = settings.model, settings.choices
    model, spec = build_cam_model(m.network, m.num_classes, m.large_feature_map,
                                  settings.data.crop_size, m.cam_layer, m.head,
                                  settings.wsol.network_options())
    if not m.head_bias:
        model.drop_head_bias()
    training = not settings.runtime.eval_only
    if training and m.ft_ckpt:
        checkpoint = load_checkpoint_file(m.ft_ckpt)
        has_branch = any(k.split(".", 1)[0] in ("fc2", model.sigmoid_branch_name)
                         for k in checkpoint["state_dict"])
        if has_branch and m.dual:  # continue a fine-tuned branch
            model.add_sigmoid_branch(choices.sigmoid_init)
        load_into_cam_model(model, m.ft_ckpt, checkpoint)
        log.info("%s weights loaded from %s", "dual-branch" if model.is_dual else "vanilla",
                 m.ft_ckpt)
    elif training and m.pretrained:
        path = find_pretrained(spec, m.pretrained_path)
        load_pretrained(model, spec, path)
        log.info("initialised from the pretrained weights %s", path)
    if m.dual:
        if training and not (m.ft_ckpt or m.pretrained):
            raise BuildError("--model_structure b2 fine-tunes the sigmoid branch of a trained "
                             "vanilla model: pass its checkpoint with --ft_ckpt (or "
                             "--pretrained to start from ImageNet weights)")
        if not model.is_dual:
            model.add_sigmoid_branch(choices.sigmoid_init)
        model.freeze_backbone(m.unfreeze, choices.frozen_mode)
    if m.recam:
        try:
            model.add_reactivation_head(choices.seed, m.recam_map, m.recam_clamp)
        except ValueError as error:  # a head without class weights
            raise BuildError(f"--recam: {error}") from None
        if m.recam_trains == "heads":  # the BCE head and fc_re; classification unchanged
            bce_head = "fc2" if model.is_dual else model.head_name
            model.freeze_backbone((bce_head, "fc_re"), choices.frozen_mode)
        else:
            model.freeze_backbone(("all",))
            model.frozen_bn = True  # ReCAM's FixedBatchNorm
    if m.freeze:
        try:
            model.freeze(m.freeze)
        except ValueError as error:
            raise BuildError(str(error)) from None
    model.frozen_bn = model.frozen_bn or m.frozen_bn
    return model, spec


def load_for_evaluation(settings: RunSettings, model: CAMModel) -> str:
    """Load the checkpoint that --eval_only scores; fail at once if missing."""
    path = checkpoint_path(settings.log_folder, settings.evaluation.checkpoint)
    if os.path.isfile(path):
        load_into_cam_model(model, path)
        return path
    if not settings.model.dual and settings.model.ft_ckpt:
        load_into_cam_model(model, settings.model.ft_ckpt)
        return settings.model.ft_ckpt
    raise CheckpointError(f"no checkpoint to evaluate: {path} does not exist (train first, "
                          f"or check --experiment_name/--eval_checkpoint_type)")


def loader_settings(settings: RunSettings, spec: ArchitectureSpec, train: bool,
                    device: torch.device) -> LoaderSettings:
    """How the images of a split are loaded: training batches, evaluation
    batches, or (seeds) one image at a time at its own size."""
    data = settings.data
    seeds = data.info.multi_label and not train  # seed maps at the images' own size
    return LoaderSettings(1 if seeds else settings.optim.batch_size, data.workers,
                          data.resize_size, data.crop_size, data.proxy_training_set and train,
                          data.num_val_sample_per_class, data.skip_bad_images,
                          data.prefetch_factor,
                          device if data.decode_on_device and not seeds else None,
                          spec.mean, spec.std, multi_label=data.info.multi_label,
                          augment=data.train_augment, resize_long=tuple(data.resize_long),
                          keep_size=seeds)


def ensure_builtin_dataset(settings: RunSettings) -> None:
    """SYNTH and SYNTH_ML are generated the first time they are needed."""
    data = settings.data
    if data.dataset_name not in ("SYNTH", "SYNTH_ML") or os.path.isdir(data.metadata_folder):
        return
    if data.dataset_name == "SYNTH":
        from wsol.data.synth import ensure_synth
        ensure_synth(data.data_root, data.metadata_root, data.mask_root)
    else:
        from wsol.data.synth_ml import ensure_synth_ml
        ensure_synth_ml(data.data_root, data.metadata_root, data.mask_root)


def preflight(settings: RunSettings, model: CAMModel, device: torch.device) -> RunSettings:
    """What can fail later is checked before any work: the splits' images and
    metadata (none empty; for boxes, image_sizes.txt against the images), and
    whether the model's CAM layer and head fit the methods
    (wsol.cams.verify_cam_model, on a random image of the input size).  With
    --method left at its default, the methods the model's head cannot compute
    (cam without class weights) are dropped, with a note: the settings returned."""
    from wsol.cams import supported_methods
    from wsol.data.metadata import (GroundTruth, MetadataError, check_image_sizes,
                                    configure_metadata, get_class_labels, get_image_ids,
                                    get_multi_labels, get_segmentation_paths)
    data, runtime = settings.data, settings.runtime
    split = settings.evaluation.split
    evaluated = not runtime.skip_eval
    training = [] if runtime.eval_only else [data.train_split]
    for name in training + ([split] if evaluated else []):
        if not os.path.isdir(data.image_root):
            raise MetadataError(f"image folder not found: {data.image_root} (check "
                                f"--data_root: images of dataset D are under <data_root>/D)")
        metadata = configure_metadata(data.split_metadata(name))
        proxy = data.proxy_training_set and name in training
        if not get_image_ids(metadata, proxy=proxy):
            listing = metadata["image_ids_proxy" if proxy else "image_ids"]
            raise MetadataError(f"{listing} lists no images: the {name} split is empty "
                                f"(check the metadata, or --metadata_root)")
        if data.info.multi_label:
            get_multi_labels(metadata)
            if name == split and evaluated:
                get_segmentation_paths(metadata)
        elif name == split and evaluated:
            GroundTruth(metadata, mask_root=data.mask_folder, boxes=data.info.boxes,
                        masks=data.info.masks)
            if data.info.boxes:
                check_image_sizes(metadata, data.image_root, max(1, data.workers))
        else:
            get_class_labels(metadata)
    if evaluated:
        size = data.crop_size
        probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        cams = settings.cams
        methods, reason = supported_methods(model, probe.to(device), cams.instances(),
                                            cams.branches, drop=cams.defaulted)
        if reason:
            names = tuple(m.name for m in methods)
            log.info("--method: %s, not the default %s: %s", ",".join(names),
                     ",".join(cams.methods), reason)
            settings = settings.replace(cams={"methods": names})
    return settings

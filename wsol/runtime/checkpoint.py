"""Loading and saving weights without trusting pickles.

Every load uses ``torch.load(..., weights_only=True)``: a file that needs
arbitrary unpickling is refused, never executed.  Checkpoints are written to a
temporary file and renamed, so an interrupted save never leaves a truncated
file that looks valid.

Checkpoints use the public code's layout: the base model's keys as its
network names them and the sigmoid branch under the network's own branch
name (``fc2``, ``SPG_A4_2``, ``classifier_2``, ``head2``); keys may carry
DataParallel's ``module.`` prefix.  ImageNet weights come from a local file
or from torchvision's own cache (``$TORCH_HOME/hub/checkpoints``) or timm's
(the Hugging Face cache); nothing is downloaded.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import zlib
from typing import Any

import torch
import torch.nn as nn

from wsol.architectures import ArchitectureSpec, recognise_network
from wsol.errors import UserError, write_failure
from wsol.dual_branch import SIGMOID_BRANCH
from wsol.model import CAMModel
from wsol.settings import RunSettings, read_run_settings

__all__ = ["CheckpointError", "load_checkpoint_file", "save_checkpoint", "check_finite",
           "load_into_cam_model", "load_pretrained", "find_pretrained", "export_state_dict",
           "link_checkpoint", "MODEL_SETTINGS", "recorded_settings", "check_settings",
           "resolve_settings", "model_from_checkpoint", "RECOGNISED", "peek_checkpoint",
           "model_record", "verify_checksums", "CHECKSUMS"]


class CheckpointError(UserError):
    """A checkpoint is missing, unsafe, or does not fit the model."""


_ZIP = b"PK\x03\x04"
_NUMPY = b"\x93NUMPY"
_GZIP = b"\x1f\x8b"
# torch.save's format before zip files: its magic number pickled first.
_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def _what_it_is(path: str, head: bytes) -> str | None:
    """What a file that is not a readable checkpoint looks like, as a phrase;
    None when it has a checkpoint's format (zip archive or pickle)."""
    if not head:
        return "is empty (0 bytes): an interrupted copy or save?"
    if head.startswith(_ZIP) or head[:1] == b"\x80":
        return None
    if head.startswith(_NUMPY):
        return "is a NumPy .npy file, not a checkpoint"
    if head.startswith(_GZIP):
        return "is gzip-compressed: decompress it first"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"is a text file, not a checkpoint (it starts {text.splitlines()[0][:40]!r})"
    return f"is not a PyTorch checkpoint (unknown content, first bytes {head[:4].hex(' ')})"


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Read a checkpoint safely; returns a dict with at least ``state_dict``.
    Anything else gets one sentence saying what the file is instead (empty,
    text, truncated, needing unsafe unpickling, ...)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return {"state_dict": load_file(path)}
    with open(path, "rb") as f:
        head = f.read(512)
    problem = _what_it_is(path, head)
    if problem:
        raise CheckpointError(f"{path} {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: it stores a Python object ({unsafe.group(1)}) "
                f"that needs unsafe unpickling, which could run code; re-save its weights "
                f"with torch.save(model.state_dict(), ...)") from None
        torch_saved = head.startswith(_ZIP) or _LEGACY_MAGIC in head[:32]
        what = ("it was written by torch.save but holds objects" if torch_saved
                else "it is a plain pickle, not torch.save's format,")
        raise CheckpointError(
            f"refusing to load {path}: {what} that only unsafe unpickling could read "
            f"({_last_words(error)}), which could run code; re-save its weights with "
            f"torch.save(model.state_dict(), ...)") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as error:
        if head.startswith(_ZIP):
            raise CheckpointError(f"{path} is truncated or damaged (its zip archive is "
                                  f"incomplete: {_last_words(error)}); copy it again or use "
                                  f"an earlier checkpoint") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {_last_words(error)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        verify_checksums(obj, path)
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise CheckpointError(f"{path} holds neither a state_dict nor {{'state_dict': ...}}")


def _last_words(error: BaseException) -> str:
    """The gist of an exception's message, without torch's advice."""
    text = str(error).strip() or type(error).__name__
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return detail.group(1)[:160]
    return text.splitlines()[0].split(". ")[0][:160]


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


# The CRC-32 of every tensor a checkpoint holds, by its place in the payload
# ("state_dict/fc.weight", "optimizer/state/0/momentum_buffer"): bytes
# overwritten in the middle of a file (bit rot, a partial copy over an older
# file) leave torch's zip archive readable and its tensors wrong.
CHECKSUMS = "checksums"


def _tensors(value: Any, prefix: str = ""):
    """(place, tensor) of every tensor in a payload, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            if key != CHECKSUMS:
                yield from _tensors(value[key], f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{prefix}/{i}")


def tensor_checksum(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes (its dtype and shape included)."""
    data = tensor.detach().cpu().contiguous()
    crc = zlib.crc32(f"{data.dtype}{tuple(data.shape)}".encode())
    return zlib.crc32(data.reshape(-1).view(torch.uint8).numpy(), crc) if data.numel() else crc


def checksums(payload: dict[str, Any]) -> dict[str, int]:
    return {place: tensor_checksum(tensor) for place, tensor in _tensors(payload)}


def verify_checksums(checkpoint: dict[str, Any], path: str) -> None:
    """A CheckpointError naming the file and the first tensor whose bytes
    changed since it was written; checkpoints of other code (no checksums)
    pass (their NaN/inf guard is check_finite)."""
    recorded = checkpoint.get(CHECKSUMS)
    if not isinstance(recorded, dict):
        return
    for place, tensor in _tensors(checkpoint):
        if recorded.get(place) != tensor_checksum(tensor):
            raise CheckpointError(
                f"{path} is damaged: tensor {place} is not what was saved (its checksum "
                f"differs: bit rot, or a partial copy over an older file?); copy it again or "
                f"use an earlier checkpoint")
    missing = sorted(set(recorded) - {place for place, _ in _tensors(checkpoint)})
    if missing:
        raise CheckpointError(f"{path} is damaged: tensor {missing[0]} that was saved is "
                              f"missing; copy it again or use an earlier checkpoint")


def save_checkpoint(payload: dict[str, Any], path: str) -> None:
    """Atomic save: temporary file in the same folder, then rename, with the
    checksum of every tensor (:func:`verify_checksums` at every load).  A
    failed write (a full disk) leaves no partial file and raises one
    WriteError naming the path and the space needed."""
    payload = {**payload, CHECKSUMS: checksums(payload)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, (OSError, RuntimeError)):
            kept = ("the previous one is unchanged" if os.path.exists(path)
                    else "the checkpoints before it are kept")
            raise write_failure("checkpoint", path, error, _tensor_bytes(payload),
                                kept) from None
        raise


def link_checkpoint(source: str, path: str) -> None:
    """Make ``path`` the same file as ``source`` (a hard link, atomically
    replacing ``path``; a copy where links are not supported)."""
    tmp = path + ".link.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        import shutil
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def export_state_dict(model: CAMModel) -> dict[str, torch.Tensor]:
    """Weights in the public code's layout (see the module docstring)."""
    return {model.public_name(k): v for k, v in model.state_dict().items()}


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _describe_mismatch(path: str, missing: list[str], unexpected: list[str],
                       shapes: list[str], hint: str) -> str:
    def head(keys):
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
    parts = [f"checkpoint {path} does not fit the model"]
    if missing:
        parts.append(f"missing keys: {head(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {head(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {head(shapes)}")
    parts.append(hint)
    return "; ".join(parts)


_FIT_HINT = "check --architecture, --large_feature_map, --crop_size and the number of classes"


def _load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], path: str,
                 hint: str = _FIT_HINT) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(_describe_mismatch(path, missing, unexpected, shapes, hint))
    module.load_state_dict(state_dict, strict=False)


def check_finite(state_dict: dict[str, torch.Tensor], where: str) -> None:
    """A CheckpointError naming the first tensor holding NaN or inf (a
    diverged run's weights would fine-tune on or score as plausible numbers)."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"{where}: tensor {name} holds {bad} NaN/inf value(s) of "
                    f"{tensor.numel()} (a diverged run?); use an earlier checkpoint")


def load_into_cam_model(model: CAMModel, path: str,
                        checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a vanilla or dual-branch checkpoint (ours or the public code's,
    keys possibly prefixed ``module.``).  A vanilla checkpoint fills the base
    model; a dual-branch one also fills the branch.  Returns the checkpoint
    (``checkpoint``: the file's contents, when already read)."""
    if checkpoint is None:
        checkpoint = load_checkpoint_file(path)
    check_finite(checkpoint["state_dict"], path)
    state = _strip(checkpoint["state_dict"], "module.")
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    branch_names = {SIGMOID_BRANCH, model.sigmoid_branch_name}
    branch = {k.split(".", 1)[1]: v for k, v in state.items()
              if k.split(".", 1)[0] in branch_names and "." in k}
    reactivation = {k.split(".", 1)[1]: v for k, v in state.items()
                    if k.startswith(_REACTIVATION + ".")}
    base = {k: v for k, v in state.items()
            if k.split(".", 1)[0] not in branch_names | {_REACTIVATION}}
    recorded = checkpoint.get("architecture")
    if recorded:
        recorded, _ = recognise_network(recorded, checkpoint["state_dict"])
    hint = (f"it is a {recorded} checkpoint: pass --architecture {recorded}"
            if recorded and recorded != model.architecture else _FIT_HINT)
    _load_strict(model.model, base, path, hint)
    if model.fc2 is not None:
        if not branch:
            raise CheckpointError(
                f"{path} is a vanilla checkpoint without the sigmoid branch "
                f"{model.sigmoid_branch_name}: fine-tune one first (--model_structure b2 "
                f"--ft_ckpt {path}), or evaluate it as --model_structure vanilla")
        _load_strict(model.fc2, branch, path, hint)
    if model.fc_re is not None:
        if not reactivation:
            raise CheckpointError(
                f"{path} has no re-activation head ({_REACTIVATION}): train one with --recam, "
                f"or evaluate it without the recam branch")
        _load_strict(model.fc_re, reactivation, path, hint)
    return checkpoint


_REACTIVATION = "fc_re"  # ReCAM's re-activation head (wsol.recam)


# ---------------------------------------------------------------------------
# ImageNet weights from local files or the libraries' own caches
# ---------------------------------------------------------------------------
def _torchvision_file(spec: ArchitectureSpec) -> tuple[str, str]:
    """(file name, download address) of torchvision's ImageNet weights."""
    import torchvision
    weights = getattr(torchvision.models, spec.torchvision_weights).IMAGENET1K_V1
    return os.path.basename(weights.url), weights.url


# The file names the public code looks for in its --pretrained_path folder.
_PUBLIC_CODE_FILES = {"vgg16": "vgg16.pth", "vgg16_gradcam": "vgg16.pth",
                      "inception_v3": "inceptionv3.pth", "inception_v3_gradcam": "inceptionv3.pth",
                      "resnet50": "resnet50.pth"}


def find_pretrained(spec: ArchitectureSpec, path: str | None = None) -> str:
    """The ImageNet weight file of ``spec``: ``path`` itself, a file inside the
    folder ``path``, or torchvision's / timm's cache; a missing file is one
    error saying which file to put where."""
    if path and os.path.isfile(path):
        return path
    if spec.torchvision_weights:
        name, url = _torchvision_file(spec)
        folder = path or os.path.join(torch.hub.get_dir(), "checkpoints")
        for candidate in (name, _PUBLIC_CODE_FILES.get(spec.name)):
            if candidate and os.path.isfile(os.path.join(folder, candidate)):
                return os.path.join(folder, candidate)
        where = (f"into {folder}" if path else
                 f"into torchvision's cache {folder} ($TORCH_HOME/hub/checkpoints)")
        raise CheckpointError(f"no ImageNet weights for {spec.name}: put {name} ({url}) "
                              f"{where}, or pass --pretrained_path FILE")
    if spec.timm_name:
        import timm
        cfg = timm.create_model(spec.timm_name, pretrained=False).pretrained_cfg
        hub_id = cfg.get("hf_hub_id")
        if hub_id:
            from huggingface_hub import try_to_load_from_cache
            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str):
                    return found
        raise CheckpointError(f"no ImageNet weights for {spec.name} in timm's cache (the "
                              f"Hugging Face cache, model {hub_id}): download them there or "
                              f"pass --pretrained_path FILE")
    raise CheckpointError(f"{spec.name} has no known ImageNet weights: pass --pretrained_path "
                          f"FILE")


def load_pretrained(model: CAMModel, spec: ArchitectureSpec, path: str) -> None:
    """Initialise the model from ImageNet weights (:func:`find_pretrained`).

    Layers the file does not have (conv6, SPG_A3_*, the head of another class
    count) keep their initialisation; layers the network does not have
    (classifier of VGG16-CAM, auxiliary logits) are dropped by the
    architecture's key map; any other mismatch is an error.
    """
    state = load_checkpoint_file(path)["state_dict"]
    check_finite(state, path)
    state = _strip(state, "module.")
    if spec.pretrained_keys is not None:
        state = spec.pretrained_keys(state, model.model)
    own = model.model.state_dict()
    head = model.head_name + "."
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and v.shape != own[k].shape
              and not k.startswith(head)]
    loaded = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in loaded and not k.startswith(head)
               and not k.startswith(spec.fresh_layers)]
    if unexpected or shapes or missing:
        raise CheckpointError(_describe_mismatch(
            path, missing, unexpected, shapes,
            f"is it {spec.name}'s ImageNet weight file?"))
    model.model.load_state_dict(loaded, strict=False)


# ---------------------------------------------------------------------------
# Rebuilding a model from what its checkpoint records
# ---------------------------------------------------------------------------
# What a training run records about its model (checkpoint and config.json).
MODEL_SETTINGS = ("architecture", "num_classes", "model_structure", "large_feature_map",
                  "crop_size", "resize_size", "cam_layer", "head", "sigmoid_init",
                  "frozen_mode", "replay", "dataset_name", "recam", "head_bias")
_DEFAULTS = {"large_feature_map": False, "crop_size": 224, "resize_size": 256,
             "cam_layer": None, "head": None, "sigmoid_init": "clone", "frozen_mode": "eval",
             "replay": "none", "dataset_name": None, "recam": False, "head_bias": True}


def model_record(settings: RunSettings) -> dict[str, Any]:
    """What a checkpoint records of the run that wrote it (:data:`MODEL_SETTINGS`),
    at the top level as the public code records ``architecture``."""
    m, data, choices = settings.model, settings.data, settings.choices
    return {"architecture": m.network, "num_classes": m.num_classes,
            "model_structure": m.model_structure, "large_feature_map": m.large_feature_map,
            "crop_size": data.crop_size, "resize_size": data.resize_size,
            "cam_layer": m.cam_layer, "head": m.head, "sigmoid_init": choices.sigmoid_init,
            "frozen_mode": choices.frozen_mode, "replay": settings.replay,
            "dataset_name": data.dataset_name, "recam": m.recam, "head_bias": m.head_bias}


def _experiment_config(path: str) -> dict:
    """What the ``config.json`` of the experiment folder holding ``path`` records
    of :data:`MODEL_SETTINGS` (empty without one)."""
    settings = read_run_settings(os.path.dirname(os.path.abspath(path)))
    return model_record(settings) if settings is not None else {}


def peek_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint read memory-mapped (its tensors are not read until used):
    what it records and its keys, cheaply, before the model is built."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an older format without mmap support, or not a checkpoint
        return load_checkpoint_file(path)
    if isinstance(checkpoint, dict) and not isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = {"state_dict": checkpoint}  # a plain state dict
    return checkpoint


# Where recorded_settings says why it took another network than the recorded
# name (wsol.architectures.recognise_network): a line for the log.
RECOGNISED = "recognised"


def recorded_settings(path: str, checkpoint: dict | None = None) -> dict[str, Any]:
    """What the checkpoint (and its experiment's ``config.json``) record of
    :data:`MODEL_SETTINGS`; missing keys are absent (a bare wsolevaluation
    checkpoint records little).  A checkpoint of the public code that names
    only the backbone gets the network its keys belong to, and under
    :data:`RECOGNISED` the reason.  Reads the file memory-mapped when it is not given."""
    if checkpoint is None:
        checkpoint = peek_checkpoint(path)
    config = _experiment_config(path)
    settings = {k: config[k] for k in MODEL_SETTINGS if k in config}
    if isinstance(checkpoint, dict):
        settings.update({k: checkpoint[k] for k in MODEL_SETTINGS if k in checkpoint})
        state = checkpoint.get("state_dict")
        if settings.get("architecture") and isinstance(state, dict):
            network, reason = recognise_network(settings["architecture"], state)
            if reason:
                settings[RECOGNISED] = (f"{path} records --architecture "
                                        f"{settings['architecture']}, and {reason}")
                settings["architecture"] = network
    return settings


# Settings that only describe how a model was trained: never a conflict.
_TRAINING_ONLY = ("sigmoid_init", "frozen_mode", "dataset_name")


def check_settings(path: str, recorded: dict[str, Any], given: dict[str, Any],
                   same: dict[str, Any] | None = None) -> None:
    """A :class:`CheckpointError` naming both values when a setting the user
    gave explicitly contradicts what the checkpoint records; ``same``: per
    key, a function deciding whether two values agree (default: equality)."""
    for key, value in given.items():
        if key in _TRAINING_ONLY or key not in recorded or value is None:
            continue
        agree = (same or {}).get(key, lambda a, b: a == b)
        if not agree(recorded[key], value):
            raise CheckpointError(
                f"{path} was trained with {_flag(key)} {_show(recorded[key])}, not "
                f"{_show(value)}: drop {_flag(key)} (it is read from the checkpoint) or "
                f"evaluate a checkpoint of that setting")


def resolve_settings(path: str, given: dict[str, Any], checkpoint: dict | None = None
                     ) -> dict[str, Any]:
    """The model settings of a checkpoint: what it records, with ``given``
    (values the user passed explicitly) filling the gaps; a given value that
    contradicts a recorded one is an error (:func:`check_settings`)."""
    recorded = recorded_settings(path, checkpoint)
    check_settings(path, recorded, given)
    settings = {**_DEFAULTS, **{k: v for k, v in given.items() if v is not None}, **recorded}
    if not settings.get("architecture"):
        raise CheckpointError(f"{path} does not say which architecture it is: pass "
                              f"--architecture (vgg16, resnet50, inception_v3, ...)")
    return settings


def _flag(key: str) -> str:
    return {"architecture": "--architecture"}.get(key, f"--{key}")


def _show(value: Any) -> str:
    return str(value).upper() if isinstance(value, bool) else str(value)


def model_from_checkpoint(path: str, given: dict[str, Any] | None = None
                          ) -> tuple[CAMModel, ArchitectureSpec, dict[str, Any]]:
    """The :class:`CAMModel` of a checkpoint, rebuilt from what it records
    (``given`` fills what it does not), weights loaded, in eval mode."""
    from wsol.architectures import build_cam_model
    checkpoint = load_checkpoint_file(path)
    settings = resolve_settings(path, dict(given or {}), checkpoint)
    state = _strip(checkpoint["state_dict"], "module.")
    model, spec = build_cam_model(settings["architecture"], settings.get("num_classes") or 1,
                                  settings["large_feature_map"], settings["crop_size"],
                                  settings["cam_layer"], settings["head"])
    if not settings.get("num_classes"):  # a bare checkpoint: its head says
        head = state.get(model.head_name + ".weight")
        if head is None:
            raise CheckpointError(f"{path} has no {model.head_name}.weight: is it a "
                                  f"{settings['architecture']} checkpoint? (pass "
                                  f"--architecture / --num_classes)")
        settings["num_classes"] = int(head.shape[0])
        model, spec = build_cam_model(settings["architecture"], settings["num_classes"],
                                      settings["large_feature_map"], settings["crop_size"],
                                      settings["cam_layer"], settings["head"])
    if "model_structure" not in settings:
        branch = {SIGMOID_BRANCH, model.sigmoid_branch_name}
        settings["model_structure"] = ("b2" if any(k.split(".", 1)[0] in branch for k in state)
                                       else "vanilla")
    head = model.head_name
    if settings.get("head_bias") is False or (f"{head}.weight" in state
                                             and f"{head}.bias" not in state):
        settings["head_bias"] = False  # a bias-free head (ReCAM's)
        model.drop_head_bias()
    if settings["model_structure"] == "b2":
        model.add_sigmoid_branch("clone")
    if settings.get("recam") or any(k.startswith(_REACTIVATION + ".") for k in state):
        settings["recam"] = True
        model.add_reactivation_head()
    load_into_cam_model(model, path, checkpoint)
    return model.eval(), spec, settings

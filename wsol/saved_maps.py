"""The record beside saved score maps: what ``evaluation.py`` needs to score
them again exactly as the run did.

``main.py --save_scoremaps`` writes the maps under
``scoremaps/<split>/<method>_<branch>/`` and, beside them, ``run.json`` (one
``run.rank<R>.json`` per process of a torchrun job, each with its own
images): the softmax head's predictions (Top-1 Cls and Top-1 Loc), the
settings the numbers depend on (:data:`SCORED_SETTINGS`) and what each
branch's maps clamp.  :func:`read_record` merges the ranks' files;
:func:`adopt_settings` takes the recorded settings, refusing a flag that
contradicts them (docs/protocol.md, "Scoring saved maps").
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from wsol.errors import UserError
from wsol.results import read_json, write_json

__all__ = ["RECORD", "SCORED_SETTINGS", "SavedRecord", "MapWriter", "write_record",
           "read_record", "adopt_settings", "describe_settings", "scored_settings"]

RECORD = "run.json"
# The settings of the box / mask / seed numbers, as main.py's flags name them.
SCORED_SETTINGS = ("cam_curve_interval", "iou_threshold_list", "loc_threshold",
                   "first_box_only", "multi_contour_eval", "threshold_list", "seed_threshold")


@dataclass
class SavedRecord:
    settings: dict[str, Any]               # SCORED_SETTINGS the run recorded
    predictions: dict[str, int] = field(default_factory=dict)  # image id -> top-1 class
    clamp_rules: dict[str, str] = field(default_factory=dict)  # branch -> wsol.branches rule
    source: str = ""                       # the file(s) it was read from, for messages


def scored_settings(settings) -> dict[str, Any]:
    """The :data:`SCORED_SETTINGS` of a run (a :class:`wsol.settings.RunSettings`)
    that its saved maps' numbers depend on."""
    evaluation, choices = settings.evaluation, settings.choices
    if settings.data.info.multi_label:
        return {"seed_threshold": evaluation.seed_threshold}
    return {"cam_curve_interval": evaluation.cam_curve_interval,
            "iou_threshold_list": evaluation.iou_threshold_list,
            "loc_threshold": evaluation.loc_threshold, "first_box_only": choices.first_box_only,
            "multi_contour_eval": evaluation.multi_contour_eval,
            "threshold_list": choices.threshold_list}


class MapWriter:
    """Writes a run's maps under ``folder`` (``<method>_<branch>/<image_id>.npy``,
    seeds ``.npz``) and, at the end, the record beside them."""

    def __init__(self, folder: str, settings: Mapping[str, Any], rank: int | None = None):
        self.folder, self.settings, self.rank = folder, dict(settings), rank
        self.predictions: dict[str, int] = {}  # image id -> the softmax head's top-1

    def _path(self, method: str, branch: str, image_id: str, suffix: str) -> str:
        path = os.path.join(self.folder, f"{method}_{branch}", image_id + suffix)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def save(self, maps, image_ids: Iterable[str], method: str, branch: str) -> None:
        """Normalised maps [B, H, W] (a tensor on any device), one file each."""
        import numpy as np
        for array, image_id in zip(maps.float().cpu().numpy(), image_ids):
            np.save(self._path(method, branch, image_id, ".npy"), array)

    def save_seeds(self, maps, keys: Iterable[int], image_id: str, method: str,
                   branch: str) -> None:
        """One image's seed maps [K, H, W] and their class indices."""
        import numpy as np
        np.savez(self._path(method, branch, image_id, ".npz"), maps=maps,
                 keys=np.asarray(list(keys), np.int64))

    def write_record(self, clamp_rules: Mapping[str, str]) -> str:
        return write_record(self.folder, self.settings, self.predictions, clamp_rules,
                            self.rank)


def record_name(rank: int | None) -> str:
    return RECORD if rank is None else f"run.rank{rank}.json"


def write_record(folder: str, settings: Mapping[str, Any], predictions: Mapping[str, int],
                 clamp_rules: Mapping[str, str], rank: int | None = None) -> str:
    """Write the record of one process (``rank`` None: the only one)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, record_name(rank))
    unknown = set(settings) - set(SCORED_SETTINGS)
    if unknown:
        raise ValueError(f"not a scored setting: {sorted(unknown)}")
    write_json({"predictions": dict(predictions), "clamp_rules": dict(clamp_rules),
                **{k: _plain(v) for k, v in settings.items()}}, path)
    return path


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def read_record(folder: str) -> SavedRecord | None:
    """The record of the maps in ``folder`` (all ranks' merged), or None when
    the folder has none (maps of another tool)."""
    single = os.path.join(folder, RECORD)
    paths = [single] if os.path.isfile(single) else sorted(
        glob.glob(os.path.join(folder, "run.rank*.json")))
    if not paths:
        return None
    source = paths[0] if len(paths) == 1 else (
        f"{os.path.join(folder, 'run.rank*.json')} ({len(paths)} ranks)")
    merged: SavedRecord | None = None
    for path in paths:
        try:
            data = read_json(path)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read the record of the saved maps {path}: {error}") \
                from None
        settings = {k: data[k] for k in SCORED_SETTINGS if k in data}
        rules = dict(data.get("clamp_rules") or _legacy_rules(data))
        if merged is None:
            merged = SavedRecord(settings, {}, rules, source)
        elif settings != merged.settings or rules != merged.clamp_rules:
            differ = sorted(k for k in set(settings) | set(merged.settings)
                            if settings.get(k) != merged.settings.get(k)) or ["clamp_rules"]
            raise UserError(f"the records of one run disagree on {', '.join(differ)}: "
                            f"{paths[0]} vs {path}; were these maps saved by one run?")
        merged.predictions.update(data.get("predictions") or {})
    return merged


def _legacy_rules(data: Mapping) -> dict[str, str]:
    """Records of earlier versions said only whether the sigmoid branch clamped."""
    clamp = bool(data.get("clamp", True))
    return {"softmax": "none", "sigmoid": "weights" if clamp else "none"}


def adopt_settings(values: Mapping[str, Any], explicit: Iterable[str],
                   record: SavedRecord | None) -> dict[str, Any]:
    """``values`` (the command's settings) with the recorded ones taking the
    place of every default; a setting given explicitly that contradicts the
    record is a UserError naming both values."""
    adopted = dict(values)
    if record is None:
        return adopted
    explicit = set(explicit)
    for key, recorded in record.settings.items():
        if key not in adopted:
            continue
        given = adopted[key]
        if key in explicit and not _same(given, recorded):
            raise UserError(
                f"--{key} {_show(given)} contradicts the run's {_show(recorded)}, recorded in "
                f"{record.source}: drop --{key} to score with the run's settings")
        adopted[key] = type(given)(recorded) if isinstance(given, (tuple, list)) else recorded
    return adopted


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).upper()
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def describe_settings(values: Mapping[str, Any], keys: Iterable[str],
                      record: SavedRecord | None, maps: bool = True) -> str:
    """One line under the table: the settings the numbers were computed with,
    and where from (``maps``: saved maps were scored, which may have a record)."""
    used = ", ".join(f"{k} {_show(values[k])}" for k in keys if k in values)
    where = (f"the run's, from {record.source}" if record is not None
             else "evaluation.py's defaults and flags" +
             (": no run record beside the maps" if maps else ""))
    return f"(scored with {used}: {where})"


# ---------------------------------------------------------------------------
# Scoring saved maps (evaluation.py)
# ---------------------------------------------------------------------------
_BATCH = 256  # maps read and handed to the evaluators at a time


def pair_folders(root: str, methods: Iterable[str]) -> dict[tuple[str, str], str]:
    """(method, branch) -> folder: main.py's ``<method>_<branch>/`` sub-folders,
    or the folder itself (wsolevaluation's layout) as ``("maps", "-")``."""
    known = set(methods)
    pairs = {}
    for name in sorted(os.listdir(root)):
        method, _, branch = name.rpartition("_")
        if method in known and os.path.isdir(os.path.join(root, name)):
            pairs[(method, branch)] = os.path.join(root, name)
    return pairs or {("maps", "-"): root}


# How saved maps are expected, for the messages about the others.
_EXPECTED = ("maps are saved as main.py --save_scoremaps writes them: one .npy per image of "
             "{size}x{size} float values in [0, 1], min-max normalised")


def _load_scoremap(folder: str, image_id: str, size: int):
    import numpy as np
    # wsolevaluation saves np.save(join(root, image_id)) -> "<image_id>.npy".
    path = os.path.join(folder, image_id + ".npy")
    if not os.path.isfile(path):
        raise UserError(f"missing score map for image {image_id!r}: {path} (was it "
                        f"saved with --save_scoremaps for this split?)")
    try:
        scoremap = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the score map {path}: {error}") from None
    problem = None
    if scoremap.dtype.kind not in "fiu":
        problem = f"it holds {scoremap.dtype} values"
    elif scoremap.shape != (size, size):
        problem = f"it is {'x'.join(map(str, scoremap.shape)) or 'a scalar'}"
    elif not np.isfinite(scoremap).all():
        problem = "it holds NaN or infinite values"
    elif scoremap.size and (scoremap.min() < 0 or scoremap.max() > 1):
        problem = f"its values lie in [{scoremap.min():g}, {scoremap.max():g}]"
    if problem:
        raise UserError(f"score map {path}: {problem}; {_EXPECTED.format(size=size)}")
    # wsolevaluation's loader turns every map into float64 (t2n).
    return scoremap.astype(np.float64, copy=False)


_SEEDS_EXPECTED = ("seed maps are saved as main.py --save_scoremaps writes them: one .npz per "
                   "image holding 'maps' (the ground-truth classes' maps [K, H, W] at the "
                   "mask's size, in [0, 1]) and 'keys' (their K class indices)")


def _load_seed_maps(folder: str, image_id: str):
    import numpy as np
    path = os.path.join(folder, image_id + ".npz")
    if not os.path.isfile(path):
        raise UserError(f"missing seed maps for image {image_id!r}: {path} (was it "
                        f"saved with --save_scoremaps for this split?)")
    try:
        with np.load(path, allow_pickle=False) as saved:
            maps, keys = saved["maps"], saved["keys"]
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read the seed maps {path}: {error}; {_SEEDS_EXPECTED}") \
            from None
    if maps.dtype.kind != "f" or not np.isfinite(maps).all() or (
            maps.size and (maps.min() < 0 or maps.max() > 1)):
        raise UserError(f"seed maps {path}: NaN, infinite or out-of-range values; "
                        f"{_SEEDS_EXPECTED}")
    return maps, keys


def score_saved_maps(folders: Mapping[tuple[str, str], str], evaluators,
                     image_ids: Iterable[str],
                     corrects: Mapping[str, bool] | None = None) -> dict:
    """Feed the maps of each (method, branch) folder to a run's evaluators
    (a :class:`wsol.metrics.EvaluatorSet` over the same pairs) and return its
    rows (and, with the bootstrap, the paired differences): box and mask maps
    in batches of float64 maps, one by one as wsolevaluation scores them; seed
    maps image by image."""
    from wsol.metrics import MapBatch, SeedBatch
    image_ids = list(image_ids)
    seeds = evaluators.context.dataset.multi_label
    for (method, branch), folder in folders.items():
        if seeds:
            for image_id in image_ids:
                maps, keys = _load_seed_maps(folder, image_id)
                try:
                    evaluators.process(SeedBatch(method, branch, image_id, maps, keys,
                                                 None if corrects is None
                                                 else corrects.get(image_id)))
                except (ValueError, KeyError) as error:
                    raise UserError(f"seed maps {os.path.join(folder, image_id)}.npz: {error}; "
                                    f"{_SEEDS_EXPECTED}") from None
            continue
        for start in range(0, len(image_ids), _BATCH):
            ids = image_ids[start:start + _BATCH]
            verdicts = None if corrects is None else [corrects.get(i) for i in ids]
            size = evaluators.context.resize_length
            evaluators.process(MapBatch(method, branch,
                                        [_load_scoremap(folder, i, size) for i in ids],
                                        ids, verdicts, normalized=True))
    return evaluators.results()

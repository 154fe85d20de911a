#!/usr/bin/env python
"""Collect experiments' results into the paper's tables (markdown and CSV).

    python scripts/make_tables.py --experiments train_log/* --output tables/

reads ``results_<split>.json`` of each experiment folder (or JSON files given
directly) and writes ``tables/results.md`` and ``tables/results.csv``: one
table per dataset and split, one row per backbone and CAM method, and for
each metric (Top-1 Cls, Top-1 Loc, GT-known Loc, MaxBoxAccV2 for box datasets,
PxAP for mask datasets, Average Drop and Increase in Confidence where
measured) a *vanilla* column (the softmax branch) and an *ours* column (the
sigmoid branch, with its difference to vanilla).  Beside each number stands
the published one -- the method's Table 2 (WSOL: ImageNet, OpenImages) and
Table 1 (fidelity: CUB, Stanford Cars), or wsolevaluation's CAM baseline --
with our difference to it: ``60.40 (+0.30) [60.25, +0.15]``.
``--include_references`` lists every published row, measured or not, so
the whole of Table 1 and Table 2 is printed.

Published rows are matched to the networks that produced them
(docs/reproducing.md): CAM rows to the CAM networks, Grad-CAM rows to the
Grad-CAM networks (``vgg16_gradcam``, ``inception_v3_gradcam``, ResNet50).  A
row of another network is shown without reference numbers.

Both branches usually come from one experiment evaluated with ``--cam_branch
softmax,sigmoid`` (what ``scripts/run_*.sh`` do); a vanilla experiment's
softmax rows fill the vanilla column as well.  When several experiments give
the same cell, the most recently written results win (a warning names the
others).  Sigmoid rows scored with ``--no_clamp`` get their own row.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from wsol.architectures import CAM_NETWORKS
from wsol.data.datasets import DATASETS
from wsol.replay import REPLAYS
from wsol.results import format_p

DATASET_ORDER = ("ILSVRC", "CUB", "OpenImages", "CARS", "SYNTH")
DATASET_NAMES = {"ILSVRC": "ImageNet-1K (ILSVRC)", "CUB": "CUB-200-2011",
                 "OpenImages": "OpenImages30K", "CARS": "Stanford Cars", "SYNTH": "SYNTH"}
BACKBONE_ORDER = ("vgg16", "resnet50", "inception_v3", "resnet18")
BACKBONE_NAMES = {"vgg16": "VGG16", "resnet50": "ResNet50", "inception_v3": "InceptionV3",
                  "resnet18": "ResNet18", "mobilenet_v2": "MobileNetV2",
                  "efficientnet_b0": "EfficientNet-B0", "regnet_y_400mf": "RegNetY-400MF",
                  "shufflenet_v2_x0_5": "ShuffleNetV2-0.5", "vit": "DeiT-Tiny",
                  "vit_b_16": "ViT-B/16", "swin_t": "Swin-T", "convnext_tiny": "ConvNeXt-T"}
# The paper's networks: the backbone a network belongs to, and which network
# each backbone uses for CAM and for the gradient methods (docs/reproducing.md).
# The backbone of every network (the Grad-CAM networks, ACoL's, SPG's, ADL's).
BACKBONE_OF = dict(CAM_NETWORKS)
PAPER_NETWORK = {("vgg16", "cam"): "vgg16", ("vgg16", "grad"): "vgg16_gradcam",
                 ("resnet50", "cam"): "resnet50", ("resnet50", "grad"): "resnet50",
                 ("inception_v3", "cam"): "inception_v3",
                 ("inception_v3", "grad"): "inception_v3_gradcam"}
METHOD_ORDER = ("cam", "gradcam", "gradcam++", "smoothgradcam++", "xgradcam", "layercam",
                "scorecam", "hirescam", "eigencam")
METHOD_NAMES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++",
                "smoothgradcam++": "Smooth Grad-CAM++", "xgradcam": "XGrad-CAM",
                "layercam": "LayerCAM", "scorecam": "Score-CAM", "hirescam": "HiResCAM",
                "eigencam": "EigenCAM"}
METRICS = ("Top-1 Cls", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "PxAP", "Average Drop",
           "Increase in Confidence")
PAPER = "paper"            # Oh & Noh, BMVC 2025 (the method's report)
WSOLEVAL = "wsolevaluation"  # Choe et al., CVPR 2020 (CAM baselines)
SOURCE_MARKS = {PAPER: "", WSOLEVAL: "*"}


@dataclass(frozen=True)
class Reference:
    dataset: str
    architecture: str   # the backbone
    method: str
    metric: str
    vanilla: float | None
    ours: float | None
    source: str


def _table(dataset: str, metrics: Sequence[str], rows: str) -> list[Reference]:
    """References from a table: one line per backbone and method, a vanilla and
    an ours value per metric ('-' where the paper gives none)."""
    out = []
    for line in rows.strip().splitlines():
        backbone, method, *values = line.split()
        for i, metric in enumerate(metrics):
            vanilla, ours = (None if v == "-" else float(v) for v in values[2 * i:2 * i + 2])
            out.append(Reference(dataset, backbone, method, metric, vanilla, ours, PAPER))
    return out


# The method's Table 2 (WSOL, test splits; "ours" = sigmoid branch, clamped).
# The Grad-CAM rows are other networks, with their own Top-1 Cls.
_TABLE2 = ("Top-1 Cls", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2")
_TABLE2_ILSVRC = """
vgg16 cam 66.56 - 43.11 43.13 59.53 59.56 60.00 60.25
vgg16 gradcam 69.62 - 37.01 44.69 48.99 59.44 52.50 60.17
resnet50 cam 73.87 - 47.67 49.44 60.80 62.68 63.52 64.73
resnet50 gradcam 69.01 - 41.15 40.33 55.29 53.60 57.03 57.99
inception_v3 cam 69.72 - 42.16 44.11 57.69 60.12 63.51 64.98
inception_v3 gradcam 67.79 - 34.57 33.72 46.35 45.18 52.30 53.06
"""
_TABLE2_OPENIMAGES = """
vgg16 cam 70.00 - 58.17 60.16
vgg16 gradcam 70.12 - 55.25 56.53
resnet50 cam 74.02 - 59.36 60.49
resnet50 gradcam 74.02 - 60.56 60.24
inception_v3 cam 56.22 - 62.25 63.65
inception_v3 gradcam 68.56 - 49.64 48.16
"""
# The method's Table 1 (fidelity: Average Drop, Increase in Confidence;
# baseline -> ours), CUB-200-2011 then Stanford Cars.
_TABLE1 = ("Average Drop", "Increase in Confidence")
_TABLE1_CUB = """
vgg16 cam 45.36 37.20 7.08 18.86
vgg16 gradcam 38.88 35.66 11.36 22.06
vgg16 gradcam++ 31.11 33.98 14.46 21.75
vgg16 xgradcam 38.56 38.04 11.10 20.99
vgg16 layercam 37.19 41.58 11.27 19.50
resnet50 cam 44.17 13.86 14.76 18.42
resnet50 gradcam 46.38 19.07 13.07 13.22
resnet50 gradcam++ 43.15 18.88 14.50 13.72
resnet50 xgradcam 46.38 19.07 13.07 13.22
resnet50 layercam 43.69 19.07 13.91 13.22
"""
_TABLE1_CARS = """
vgg16 cam 31.45 43.58 9.68 10.74
vgg16 gradcam 56.10 9.96 8.11 19.46
vgg16 gradcam++ 39.63 9.46 11.71 18.46
vgg16 xgradcam 50.59 9.69 9.14 20.53
vgg16 layercam 47.51 10.51 9.70 19.39
resnet50 cam 48.86 3.77 4.32 40.62
resnet50 gradcam 29.53 3.66 14.56 41.41
resnet50 gradcam++ 24.68 3.65 17.31 41.62
resnet50 xgradcam 29.53 3.66 14.56 41.41
resnet50 layercam 22.64 3.66 18.90 41.39
"""
REFERENCES = tuple(
    _table("ILSVRC", _TABLE2, _TABLE2_ILSVRC)
    + _table("OpenImages", ("Top-1 Cls", "PxAP"), _TABLE2_OPENIMAGES)
    + _table("CUB", _TABLE1, _TABLE1_CUB) + _table("CARS", _TABLE1, _TABLE1_CARS)
    + [Reference(dataset, backbone, "cam", metric, value, None, WSOLEVAL)
       for dataset, metric, values in (("ILSVRC", "MaxBoxAccV2", (60.0, 63.4, 63.7)),
                                       ("CUB", "MaxBoxAccV2", (63.7, 56.7, 63.0)),
                                       ("OpenImages", "PxAP", (58.3, 63.2, 58.5)))
       for backbone, value in zip(("vgg16", "inception_v3", "resnet50"), values)])


def _family(method: str) -> str:
    return "cam" if method == "cam" else "grad"


def reference(dataset: str, network: str, method: str, metric: str,
              split: str = "test") -> Reference | None:
    """The published number of a row (the paper's first, else wsolevaluation's
    baseline), if the row's network is the one the paper used; test split only."""
    backbone = BACKBONE_OF.get(network, network)
    if split != "test" or PAPER_NETWORK.get((backbone, _family(method))) != network:
        return None
    found = [r for r in REFERENCES if (r.dataset, r.architecture, r.method, r.metric)
             == (dataset, backbone, method, metric)]
    found.sort(key=lambda r: r.source != PAPER)
    return found[0] if found else None


# --------------------------------------------------------------------------
# reading results
# --------------------------------------------------------------------------

@dataclass
class Cell:
    """One branch's numbers for one table row, and where they came from."""
    values: dict
    experiment: str
    path: str
    mtime: float
    intervals: dict = field(default_factory=dict)  # metric -> [lo, hi] (the bootstrap's)


@dataclass
class TableRow:
    dataset: str
    split: str
    architecture: str
    method: str
    clamp: bool = True
    protocol: str = ""        # the run's choices that are not the defaults (protocol_of)
    vanilla: Cell | None = None
    ours: Cell | None = None
    conflicts: list = field(default_factory=list)

    @property
    def label(self) -> str:
        name = METHOD_NAMES.get(self.method, self.method)
        name = name if self.clamp else f"{name} (no clamp)"
        return f"{name} [{self.protocol}]" if self.protocol else name


def protocol_of(results: dict) -> str:
    """The protocol choices of a run (wsol.replay) as a label: the replay
    switch and any choice set apart from it; '' for the defaults.  The seed
    is not one (runs of several seeds measure one protocol)."""
    replay = results.get("replay") or "none"
    base = REPLAYS.get(replay, REPLAYS["none"]).as_dict()
    choices = results.get("choices") or {}
    changed = [f"{k} {v}" for k, v in sorted(choices.items())
               if k in base and k != "seed" and v != base[k]]
    wsol = results.get("wsol_method") or "cam"  # another training method: another row
    return ", ".join(([] if replay == "none" else [f"replay {replay}"]) + changed +
                     ([] if wsol == "cam" else [f"wsol_method {wsol}"]))


def find_result_files(paths: Iterable[str], split: str | None) -> list[str]:
    """``results_<split>.json`` of each experiment folder; JSON files as given."""
    files = []
    # results_<split>.json, and results_<split>_<fingerprint>.json of other settings
    pattern = f"results_{split}*.json" if split else "results_*.json"
    for path in paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, pattern)))
        elif path.endswith(".json") and os.path.isfile(path):
            files.append(path)
    return files


def _row_values(row: dict, results: dict) -> dict:
    values = {m: row[m] for m in METRICS if isinstance(row.get(m), (int, float))}
    cls = results.get("classification") or {}
    if "Top-1 Cls" in cls:
        values["Top-1 Cls"] = cls["Top-1 Cls"]
    if "Top-1 Cls (sigmoid branch)" in cls:
        values["Top-1 Cls (sigmoid branch)"] = cls["Top-1 Cls (sigmoid branch)"]
    return values


def read_results(files: Sequence[str], warn=print) -> Iterator[tuple[str, dict]]:
    """(path, results) of each readable results_<split>.json of main.py; a
    warning for the others."""
    for path in files:
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError) as error:
            warn(f"warning: skipping {path}: {error}")
            continue
        if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
            warn(f"warning: skipping {path}: not a results_<split>.json of main.py")
            continue
        yield path, results


def collect(files: Sequence[str], warn=print) -> list[TableRow]:
    """Table rows from results files; the newest file wins a contested cell."""
    rows: dict[tuple, TableRow] = {}
    for path, results in read_results(files, warn):
        mtime = os.path.getmtime(path)
        experiment = results.get("experiment") or os.path.basename(os.path.dirname(path))
        dataset = results.get("dataset", "?")
        split = results.get("split", "?")
        architecture = results.get("architecture", "?")
        protocol = protocol_of(results)
        softmax_rows = [r for r in results["rows"] if r.get("branch") == "softmax"]
        sigmoid_rows = [r for r in results["rows"] if r.get("branch") == "sigmoid"]
        for row in sigmoid_rows:
            clamp = bool(row.get("clamp", True))
            key = (dataset, split, architecture, row.get("method"), clamp, protocol)
            table_row = rows.setdefault(key, TableRow(*key))
            _put(table_row, "ours", Cell(_row_values(row, results), experiment, path, mtime,
                                         row.get("ci95") or {}))
        for row in softmax_rows:
            key = (dataset, split, architecture, row.get("method"), True, protocol)
            table_row = rows.setdefault(key, TableRow(*key))
            _put(table_row, "vanilla", Cell(_row_values(row, results), experiment, path, mtime,
                                            row.get("ci95") or {}))
    # A no-clamp row shares the vanilla numbers of its method.
    for key, table_row in rows.items():
        if not table_row.clamp and table_row.vanilla is None:
            clamped = rows.get((*key[:4], True, key[5]))
            if clamped is not None:
                table_row.vanilla = clamped.vanilla
    for table_row in rows.values():
        for slot, kept, dropped in table_row.conflicts:
            warn(f"warning: {table_row.dataset}/{table_row.architecture}/{table_row.label} "
                 f"{slot}: using {kept} (newest), ignoring {dropped}")
    return sort_rows(rows.values())


def _put(row: TableRow, slot: str, cell: Cell) -> None:
    old = getattr(row, slot)
    if old is None:
        setattr(row, slot, cell)
        return
    if old.path == cell.path:
        return
    newer, older = (cell, old) if cell.mtime >= old.mtime else (old, cell)
    setattr(row, slot, newer)
    if newer.values != older.values:  # the same model scored twice is no conflict
        row.conflicts.append((slot, newer.path, older.path))


def _order(value: str, order: Sequence[str]) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def sort_rows(rows: Iterable[TableRow]) -> list[TableRow]:
    return sorted(rows, key=lambda r: (_order(r.dataset, DATASET_ORDER), r.split,
                                       _order(BACKBONE_OF.get(r.architecture, r.architecture),
                                              BACKBONE_ORDER),
                                       _order(r.method, METHOD_ORDER), r.architecture,
                                       r.protocol, not r.clamp))


def add_reference_rows(rows: list[TableRow]) -> list[TableRow]:
    """Rows for published numbers that no experiment matched (test split): the
    whole of Table 1 and Table 2 is printed."""
    have = {(r.dataset, r.split, r.architecture, r.method) for r in rows}
    extra = {}
    for ref in REFERENCES:
        network = PAPER_NETWORK[(ref.architecture, _family(ref.method))]
        key = (ref.dataset, "test", network, ref.method)
        if key not in have:
            extra.setdefault(key, TableRow(*key))
    return sort_rows([*rows, *extra.values()])


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------

def _metrics_of(rows: Sequence[TableRow]) -> list[str]:
    present = set()
    for row in rows:
        for cell in (row.vanilla, row.ours):
            if cell:
                present.update(cell.values)
        for metric in METRICS:
            if reference(row.dataset, row.architecture, row.method, metric, row.split):
                present.add(metric)
    if not present:
        present = {"Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "Top-1 Cls"}
    return [m for m in METRICS if m in present]


def _value(cell: Cell | None, metric: str) -> float | None:
    if cell is None:
        return None
    value = cell.values.get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _fmt(value: float | None, ci: list[float] | None = None, digits: int = 2) -> str:
    """A number, and its 95% interval ``lo-hi`` when measured."""
    if value is None:
        return "—"
    text = f"{value:.{digits}f}"
    return text if ci is None else f"{text} {{{ci[0]:.{digits}f}-{ci[1]:.{digits}f}}}"


def row_numbers(row: TableRow, metric: str) -> dict:
    """vanilla, ours, delta and the reference pair of one row and metric."""
    vanilla, ours = _value(row.vanilla, metric), _value(row.ours, metric)
    ref = reference(row.dataset, row.architecture, row.method, metric, row.split)
    if not row.clamp:
        ref = Reference(ref.dataset, ref.architecture, ref.method, ref.metric, ref.vanilla,
                        None, ref.source) if ref else None
    ref_vanilla = ref.vanilla if ref else None
    ref_ours = ref.ours if ref else None
    if ref_ours is None and ref_vanilla is not None and metric == "Top-1 Cls":
        ref_ours = ref_vanilla  # the softmax head classifies in both ('-' in the paper)
    return {"vanilla": vanilla, "ours": ours,
            "vanilla_ci": _interval(row.vanilla, metric), "ours_ci": _interval(row.ours, metric),
            "delta": None if vanilla is None or ours is None else ours - vanilla,
            "ref_vanilla": ref_vanilla, "ref_ours": ref_ours,
            "ref_source": ref.source if ref else None,
            "vs_ref_vanilla": _difference(vanilla, ref_vanilla),
            "vs_ref_ours": _difference(ours, ref_ours)}


def _interval(cell: Cell | None, metric: str) -> list[float] | None:
    found = (cell.intervals or {}).get(metric) if cell is not None else None
    return found if found and None not in found else None


def _inside(ci: list[float] | None, published: float | None) -> bool | None:
    """Whether a published number lies in our 95% interval (None: unknown)."""
    if ci is None or published is None:
        return None
    return ci[0] <= published <= ci[1]


def _difference(ours: float | None, published: float | None) -> float | None:
    return None if ours is None or published is None else ours - published


def _with_ref(text: str, ref: float | None, source: str | None,
              difference: float | None = None, ci: list[float] | None = None) -> str:
    """``ours [published, ours - published, in/out of our interval ci]``."""
    if ref is None:
        return text
    versus = "" if difference is None else f", {difference:+.2f}"
    inside = _inside(ci, ref)
    where = "" if inside is None else (", in" if inside else ", out")
    return f"{text} [{ref:.2f}{SOURCE_MARKS.get(source, '')}{versus}{where}]"


def to_markdown(rows: Sequence[TableRow]) -> str:
    groups: dict[tuple, list[TableRow]] = {}
    for row in rows:
        groups.setdefault((row.dataset, row.split), []).append(row)
    out = ["# Results: vanilla (softmax branch) vs ours (sigmoid branch)", "",
           "Cells: our number; *ours* also shows its difference to vanilla in "
           "parentheses; [x, d] = the published number and ours minus it (Table 2 and "
           "Table 1 of the method's report, Oh & Noh 2025; x* = wsolevaluation's CAM "
           "baseline, Choe et al. 2020). Top-1 Cls is the softmax head's in both columns "
           "(it classifies in our model too). Average Drop: lower is better. — = not "
           "measured. [replay ...] after a method: the run's protocol choices, where "
           "they are not this toolkit's defaults (docs/reproducing.md). {lo-hi}: our 95% "
           "interval from resampling the images (--bootstrap), and 'in' / 'out' after a "
           "published number: whether it lies inside our interval.", ""]
    for (dataset, split), group in groups.items():
        metrics = _metrics_of(group)
        out.append(f"## {DATASET_NAMES.get(dataset, dataset)}, {split} split")
        out.append("")
        header = ["Backbone", "Method"]
        for metric in metrics:
            header += [f"{metric} vanilla", f"{metric} ours"]
        out.append("| " + " | ".join(header) + " |")
        out.append("| " + " | ".join(["---", "---"] + ["---:"] * (2 * len(metrics))) + " |")
        for row in group:
            cells = [_backbone_label(row), row.label]
            for metric in metrics:
                n = row_numbers(row, metric)
                ref_source = n["ref_source"]
                cells.append(_with_ref(_fmt(n["vanilla"], n["vanilla_ci"]), n["ref_vanilla"],
                                       ref_source, n["vs_ref_vanilla"], n["vanilla_ci"]))
                ours = _fmt(n["ours"], n["ours_ci"])
                if n["delta"] is not None:
                    ours += f" ({n['delta']:+.2f})"
                cells.append(_with_ref(ours, n["ref_ours"], ref_source, n["vs_ref_ours"],
                                       n["ours_ci"]))
            out.append("| " + " | ".join(cells) + " |")
        experiments = sorted({c.experiment for r in group for c in (r.vanilla, r.ours) if c})
        out.append("")
        if experiments:
            out.append(f"Experiments: {', '.join(experiments)}.")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _backbone_label(row: TableRow) -> str:
    """The backbone's name; a network other than the paper's for the method is named."""
    backbone = BACKBONE_OF.get(row.architecture, row.architecture)
    name = BACKBONE_NAMES.get(backbone, backbone)
    expected = PAPER_NETWORK.get((backbone, _family(row.method)))
    if expected is not None and expected != row.architecture:
        return f"{name} ({row.architecture} network)"
    return name


def csv_rows(rows: Sequence[TableRow]) -> tuple[list[str], list[dict]]:
    header = ["dataset", "split", "backbone", "network", "method", "clamp", "protocol"]
    for metric in METRICS:
        header += [f"{metric} vanilla", f"{metric} ours", f"{metric} delta",
                   f"{metric} ref vanilla", f"{metric} ref ours", f"{metric} ref source",
                   f"{metric} vanilla minus ref", f"{metric} ours minus ref",
                   f"{metric} vanilla lo", f"{metric} vanilla hi", f"{metric} ours lo",
                   f"{metric} ours hi", f"{metric} ref vanilla inside",
                   f"{metric} ref ours inside"]
    header += ["Top-1 Cls (sigmoid branch)", "vanilla experiment", "ours experiment"]
    records = []
    for row in rows:
        record = {"dataset": row.dataset, "split": row.split,
                  "backbone": BACKBONE_OF.get(row.architecture, row.architecture),
                  "network": row.architecture, "method": row.method, "clamp": row.clamp,
                  "protocol": row.protocol}
        for metric in METRICS:
            n = row_numbers(row, metric)
            for key, column in (("vanilla", "vanilla"), ("ours", "ours"), ("delta", "delta"),
                                ("ref_vanilla", "ref vanilla"), ("ref_ours", "ref ours"),
                                ("ref_source", "ref source"),
                                ("vs_ref_vanilla", "vanilla minus ref"),
                                ("vs_ref_ours", "ours minus ref")):
                value = n[key]
                record[f"{metric} {column}"] = ("" if value is None else
                                                round(value, 4) if isinstance(value, float)
                                                else value)
            for side in ("vanilla", "ours"):
                ci = n[f"{side}_ci"]
                record[f"{metric} {side} lo"] = "" if ci is None else round(ci[0], 4)
                record[f"{metric} {side} hi"] = "" if ci is None else round(ci[1], 4)
                inside = _inside(ci, n[f"ref_{side}"])
                record[f"{metric} ref {side} inside"] = "" if inside is None else inside
        sigmoid_cls = _value(row.ours, "Top-1 Cls (sigmoid branch)")
        record["Top-1 Cls (sigmoid branch)"] = "" if sigmoid_cls is None else round(sigmoid_cls, 4)
        record["vanilla experiment"] = row.vanilla.experiment if row.vanilla else ""
        record["ours experiment"] = row.ours.experiment if row.ours else ""
        records.append(record)
    return header, records


def write_tables(rows: Sequence[TableRow], folder: str, name: str = "results") -> tuple[str, str]:
    os.makedirs(folder, exist_ok=True)
    md_path = os.path.join(folder, f"{name}.md")
    csv_path = os.path.join(folder, f"{name}.csv")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(to_markdown(rows))
    header, records = csv_rows(rows)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(records)
    return md_path, csv_path


# wsolevaluation's main table (Choe et al., CVPR 2020; its README): MaxBoxAccV2 on ImageNet and
# CUB, PxAP on OpenImages, test splits; CAM absolute, the other methods as differences from CAM.
WSOL_TABLE_BACKBONES = ("vgg16", "inception_v3", "resnet50")
WSOL_TABLE = {
    "ILSVRC": {"cam": (60.0, 63.4, 63.7), "has": (+0.6, +0.3, -0.3), "acol": (-2.6, +0.3, -1.4),
               "spg": (-0.1, -0.1, -0.4), "adl": (-0.2, -2.0, +0.0),
               "cutmix": (-0.6, +0.5, -0.4), "center": (52.5, 52.5, 52.5)},
    "CUB": {"cam": (63.7, 56.7, 63.0), "has": (+0.0, -3.3, +1.7), "acol": (-6.3, -0.5, +3.5),
            "spg": (-7.4, -0.8, -2.6), "adl": (+2.6, +2.1, -4.6), "cutmix": (-1.4, +0.8, -0.2),
            "center": (59.7, 59.7, 59.7)},
    "OpenImages": {"cam": (58.3, 63.2, 58.5), "has": (-0.2, -5.1, -2.6),
                   "acol": (-4.0, -6.0, -1.2), "spg": (+0.0, -0.9, -1.8),
                   "adl": (+0.4, -6.4, -3.3), "cutmix": (-0.2, -0.7, -0.8),
                   "center": (45.8, 45.8, 45.8)}}


def wsol_published(dataset: str, backbone: str, method: str) -> float | None:
    """wsolevaluation's published number of a method (CAM's plus its difference)."""
    table = WSOL_TABLE.get(dataset)
    if table is None or method not in table or backbone not in WSOL_TABLE_BACKBONES:
        return None
    column = WSOL_TABLE_BACKBONES.index(backbone)
    if method in ("cam", "center"):
        return table[method][column]
    return round(table["cam"][column] + table[method][column], 1)


def wsol_table(files: Sequence[str]) -> str:
    """wsolevaluation's main table x {vanilla, + sigmoid branch}: per dataset,
    backbone and WSOL method, the softmax row's and the sigmoid row's CAM
    number beside the published one."""
    cells: dict[tuple, dict] = {}
    for _, results in read_results(files, warn=lambda message: None):  # collect() warned
        dataset = results.get("dataset", "?")
        # The dataset table says what its maps are scored with (wsol.data.datasets).
        scores = DATASETS[dataset].scores if dataset in DATASETS else ("boxes",)
        metric = "MaxBoxAccV2" if "boxes" in scores else "PxAP"
        backbone = BACKBONE_OF.get(results.get("architecture"), results.get("architecture"))
        wsol = results.get("wsol_method") or "cam"
        for row in results["rows"]:
            if row.get("method") == "cam" and isinstance(row.get(metric), (int, float)):
                cell = cells.setdefault((dataset, backbone, wsol), {"metric": metric})
                cell[row.get("branch")] = row[metric]
        for pair in results.get("paired") or ():  # the bootstrap's paired difference
            if (pair.get("metric"), pair.get("a"), pair.get("b")) == (
                    metric, {"method": "cam", "branch": "sigmoid"},
                    {"method": "cam", "branch": "softmax"}) and (dataset, backbone, wsol) in cells:
                cells[(dataset, backbone, wsol)]["paired"] = pair
                cells[(dataset, backbone, wsol)]["resamples"] = (
                    results.get("bootstrap") or {}).get("resamples")
    order = ("cam", "has", "acol", "spg", "adl", "cutmix")
    lines = ["| dataset | backbone | method | metric | published | vanilla (softmax) | "
             "+ sigmoid branch | difference (95% interval) p |",
             "|---|---|---|---|---|---|---|---|"]
    for (dataset, backbone, wsol), cell in sorted(
            cells.items(), key=lambda kv: (_order(kv[0][0], DATASET_ORDER),
                                           _order(kv[0][1], BACKBONE_ORDER),
                                           _order(kv[0][2], order))):
        vanilla, sigmoid = cell.get("softmax"), cell.get("sigmoid")
        diff = None if vanilla is None or sigmoid is None else sigmoid - vanilla
        published = wsol_published(dataset, backbone, wsol)
        text = "-" if diff is None else f"{diff:+.2f}"
        pair = cell.get("paired")
        if diff is not None and pair and pair.get("ci95"):
            lo, hi = pair["ci95"]
            text += f" ({lo:+.2f} to {hi:+.2f}) {format_p(pair['p'], cell.get('resamples'))}"
        lines.append(f"| {dataset} | {BACKBONE_NAMES.get(backbone, backbone)} | {wsol} | "
                     f"{cell['metric']} | {_fmt(published, digits=1)} | {_fmt(vanilla)} | "
                     f"{_fmt(sigmoid)} | {text} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/make_tables.py",
        description="Tables of vanilla vs sigmoid-branch results beside the paper's numbers.")
    p.add_argument("--experiments", nargs="+", required=True,
                   help="experiment folders (e.g. train_log/*) or results JSON files")
    p.add_argument("--output", default="tables", help="folder for results.md and results.csv")
    p.add_argument("--split", default="test",
                   help="which results_<split>.json to read ('all' for every split)")
    p.add_argument("--include_references", action="store_true",
                   help="also list the reference rows that no experiment matched")
    p.add_argument("--name", default="results", help="file name stem of the tables")
    p.add_argument("--wsol_table", action="store_true",
                   help="also print wsolevaluation's main table x {vanilla, + sigmoid branch} "
                        "(scripts/run_wsol_methods.sh) beside its published numbers")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = None if args.split == "all" else args.split
    files = find_result_files(args.experiments, split)
    warn = lambda message: print(message, file=sys.stderr)  # noqa: E731
    rows = collect(files, warn)
    if not rows:
        print(f"error: no results_{split or '*'}.json with result rows under "
              f"{' '.join(args.experiments)}", file=sys.stderr)
        return 2
    if args.include_references:
        rows = add_reference_rows(rows)
    md_path, csv_path = write_tables(rows, args.output, args.name)
    print(to_markdown(rows))
    if args.wsol_table:
        print("\n### WSOL methods (wsolevaluation's main table)\n")
        print(wsol_table(files))
    print(f"wrote {md_path} and {csv_path} ({len(files)} results file(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())

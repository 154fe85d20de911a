"""Results as people read them: the comparison table, strict JSON files, and
the record of how a run was made.

JSON has no NaN: :func:`write_json` writes ``null`` for it (and for
infinities), atomically, so every results file parses with a strict parser.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any, Sequence

from wsol.branches import row_label
from wsol.errors import write_failure

__all__ = ["TABLE_COLUMNS", "format_table", "json_ready", "write_json", "read_json", "run_record",
           "branch_row", "row_clamp_rule", "row_branch_label", "evaluation_record",
           "results_path", "format_results", "format_paired", "format_p"]

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("Top-1 Cls", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "PxAP", "mIoU",
                 "mIoU (best t, chosen on GT)", "best t")


def _columns(results: dict, box_column: str) -> list[str]:
    """The table's metrics: those of TABLE_COLUMNS the rows have (the box
    metric as asked), then the fidelity metrics when measured."""
    columns = [box_column if c == "MaxBoxAccV2" else c for c in TABLE_COLUMNS]
    rows = results["rows"]
    for extra in ("Average Drop", "Increase in Confidence", "ROAD MoRF", "ROAD LeRF", "ROAD"):
        if any(extra in row for row in rows):
            columns.append(extra)
    return [c for c in columns if c == "Top-1 Cls" or any(c in row for row in rows)]


def format_results(results: dict, box_column: str = "MaxBoxAccV2") -> str:
    """The table, and under it the paired differences between branches when
    the bootstrap measured them."""
    paired = format_paired(results, box_column)
    return format_table(results, box_column) + (f"\n\n{paired}" if paired else "")


def format_table(results: dict, box_column: str = "MaxBoxAccV2") -> str:
    """Rows method x branch; columns Top-1 Cls, Top-1 Loc, GT-known Loc, the box
    metric (MaxBoxAccV2, or MaxBoxAcc for single-contour evaluation), PxAP,
    and the fidelity metrics when measured.  A NaN shows as 'nan'; with the
    bootstrap each number is followed by its 95% interval, ``(lo-hi)``."""
    rows = results["rows"]
    present = _columns(results, box_column)
    warnings = [_warning(results, row) for row in rows]
    header = ["method", "branch", *present] + (["warning"] if any(warnings) else [])
    lines = [header]
    top1 = (results.get("classification") or {}).get("Top-1 Cls")
    for row, warning in zip(rows, warnings):
        values = {**row, "Top-1 Cls": top1}  # the run's, with each row's interval
        intervals = row.get("ci95") or {}
        lines.append([row["method"], row_branch_label(row)]
                     + [_cell(values.get(c), intervals.get(c)) for c in present]
                     + ([warning] if any(warnings) else []))
    thresholds = {row["threshold"] for row in rows if "threshold" in row}
    if len(thresholds) == 1 and "mIoU" in header:  # the seed mIoU's background score
        header[header.index("mIoU")] = f"mIoU (t={thresholds.pop():g})"
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def branch_row(method: str, branch: str, rule: str) -> dict:
    """The start of a results row: method, branch, and what its maps clamp
    (``clamp``: anything; ``clamp_rule``: what, wsol.branches.CLAMP_RULES)."""
    return {"method": method, "branch": branch, "clamp": rule != "none", "clamp_rule": rule}


def row_clamp_rule(row: dict) -> str:
    """What a results row's maps clamp (wsol.branches.CLAMP_RULES); rows of
    earlier versions say only whether (``clamp``)."""
    return row.get("clamp_rule") or ("weights" if row.get("clamp") else "none")


def row_branch_label(row: dict) -> str:
    """A row's branch as tables and plots name it (wsol.branches.row_label)."""
    try:
        return row_label(row["branch"], row_clamp_rule(row))
    except ValueError:  # a folder of maps without a branch (evaluation.py)
        return str(row.get("branch", "?"))


def _warning(results: dict, row: dict) -> str:
    """What makes a row's numbers suspect or partial, in a few words."""
    parts = []
    if results.get("num_nonfinite_logits"):
        parts.append(f"NaN/inf logits on {results['num_nonfinite_logits']} images")
    if row.get("num_nan_maps"):
        parts.append(f"{row['num_nan_maps']} NaN maps")
    if results.get("num_skipped_images"):
        parts.append(f"{results['num_skipped_images']} unreadable images skipped")
    return "; ".join(parts)


def _cell(value: Any, interval: Sequence[float] | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if interval:
        return f"{value:.2f} ({interval[0]:.2f}-{interval[1]:.2f})"
    return f"{value:.2f}"


def format_p(p: float, resamples: int | None) -> str:
    """A p-value as the resamples can tell it: none crossing zero is p < 2 / R."""
    if p == 0 and resamples:
        return f"p<{2 / resamples:.3g}"
    return f"p={p:.3f}"


def format_paired(results: dict, box_column: str = "MaxBoxAccV2") -> str:
    """The paired differences between branches (same method, same images,
    same resamples) for the table's metrics: ``diff (lo-hi) p``; '' without."""
    metrics = [c for c in _columns(results, box_column)
               if c not in ("Top-1 Cls", "mIoU (best t, chosen on GT)", "best t")]
    found: dict[tuple, dict] = {}
    for pair in results.get("paired") or []:
        a, b = pair["a"], pair["b"]
        if a["method"] == b["method"] and pair["metric"] in metrics:
            found.setdefault((a["method"], a["branch"], b["branch"]), {})[pair["metric"]] = pair
    if not found:
        return ""
    header = ["method", "difference", *metrics]
    lines = [header]
    resamples = (results.get("bootstrap") or {}).get("resamples")
    for (method, a, b), cells in found.items():
        line = [method, f"{a} - {b}"]
        for metric in metrics:
            pair = cells.get(metric)
            ci = pair and pair.get("ci95")
            line.append("-" if not ci else
                        f"{pair['diff']:+.2f} ({ci[0]:+.2f} to {ci[1]:+.2f}) "
                        f"{format_p(pair['p'], resamples)}")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return (f"paired differences between branches (95% interval over {resamples} resamples of "
            f"the images; p: two-sided, no difference):\n" + "\n".join(text))


def json_ready(value: Any) -> Any:
    """NaN and infinities -> None, recursively (JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(payload: Any, path: str, what: str = "file") -> None:
    """Strict JSON (no NaN), written to a temporary file and renamed: a
    failed write leaves the previous file as it was, and raises one
    WriteError naming the path (``what``: how to call the file)."""
    tmp = f"{path}.tmp"
    text = json.dumps(json_ready(payload), indent=2, allow_nan=False)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        try:
            os.remove(tmp)
        except OSError:
            pass
        kept = "the previous file is unchanged" if os.path.exists(path) else ""
        raise write_failure(what, path, error, len(text.encode()), kept) from None


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_record(command: list[str], code_dir: str, device: str | None = None,
               seed: int | None = None) -> dict:
    """How a run was made: the command line, the code's git commit (and
    whether it had uncommitted changes), the library versions, the device,
    the seed and the date."""
    import datetime
    import platform
    import shlex
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=code_dir, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "cv2", "timm"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        versions["opencv" if name == "cv2" else name] = getattr(module, "__version__", "?")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"command": shlex.join(command), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status), "versions": versions,
            "device": device, "seed": seed,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def evaluation_record(settings) -> dict:
    """What an evaluation's numbers depend on besides the model (a
    :class:`wsol.settings.RunSettings`): its settings, and the methods with theirs."""
    evaluation, cams = settings.evaluation, settings.cams
    return {"split": evaluation.split,
            "checkpoint": evaluation.checkpoint if settings.runtime.eval_only else "last",
            "methods": [repr(m) for m in cams.instances()], "branches": list(cams.branches),
            "clamp": cams.clamp, "cam_curve_interval": evaluation.cam_curve_interval,
            "iou_threshold_list": list(evaluation.iou_threshold_list),
            "loc_threshold": evaluation.loc_threshold,
            "multi_contour_eval": evaluation.multi_contour_eval,
            "choices": settings.choices.as_dict(), "fidelity": evaluation.fidelity,
            "fidelity_steps": evaluation.fidelity_steps,
            "fidelity_road": evaluation.fidelity_road, "crop_size": settings.data.crop_size,
            "recam_map": settings.model.recam_map, "recam_clamp": settings.model.recam_clamp,
            "tta_scales": list(evaluation.tta_scales),
            "seed_threshold": evaluation.seed_threshold}


def results_path(folder: str, split: str, evaluation: dict) -> str:
    """``results_<split>.json``, unless it holds an evaluation of other
    settings: then ``results_<split>_<fingerprint>.json`` (nothing is overwritten
    by numbers of other settings)."""
    path = os.path.join(folder, f"results_{split}.json")
    if os.path.isfile(path):
        try:
            previous = read_json(path).get("evaluation")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous is not None and previous != json_ready(evaluation):
            digest = hashlib.sha1(json.dumps(json_ready(evaluation), sort_keys=True)
                                  .encode()).hexdigest()[:8]
            path = os.path.join(folder, f"results_{split}_{digest}.json")
            log.info("results_%s.json holds an evaluation of other settings; writing %s",
                     split, os.path.basename(path))
    return path

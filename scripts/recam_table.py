"""Print the CAM vs ReCAM seed-mIoU table of a run_recam.sh / run_voc.sh root.

Reads ``<root>/{cam_vanilla,cam_b2,recam_vanilla,recam_b2}/results_<split>.json``
(each written by main.py) and prints, per CAM method, one row per BCE head
(the vanilla model's head, and the sigmoid branch of the dual-branch model):
the seed mIoU of its CAM and of its ReCAM maps at the fixed background score,
and the sweep's best (threshold chosen on the ground truth, an upper bound).

    python scripts/recam_table.py train_log/recam_synth --split test
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from wsol.results import read_json

# (experiment, branch whose maps it contributes) per (head, kind)
SOURCES = {("softmax head (vanilla)", "CAM"): ("cam_vanilla", "softmax"),
           ("sigmoid branch (b2)", "CAM"): ("cam_b2", "sigmoid"),
           ("softmax head (vanilla)", "ReCAM"): ("recam_vanilla", "recam"),
           ("sigmoid branch (b2)", "ReCAM"): ("recam_b2", "recam")}


def load_rows(root: str, experiment: str, split: str) -> dict:
    paths = sorted(glob.glob(os.path.join(root, experiment, f"results_{split}*.json")),
                   key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no results_{split}.json in {os.path.join(root, experiment)}: "
                                f"run scripts/run_recam.sh (or run_voc.sh) first")
    results = read_json(paths[-1])
    return {(r["method"], r["branch"]): r for r in results["rows"]}


def table(root: str, split: str) -> str:
    rows = {experiment: load_rows(root, experiment, split)
            for experiment in dict.fromkeys(e for e, _ in SOURCES.values())}
    methods = list(dict.fromkeys(m for r in rows.values() for m, _ in r))
    header = ["method", "BCE head", "CAM mIoU", "ReCAM mIoU", "CAM best (t)", "ReCAM best (t)"]
    lines = [header]
    for method in methods:
        for head in ("softmax head (vanilla)", "sigmoid branch (b2)"):
            cells = [method, head]
            found = {}
            for kind in ("CAM", "ReCAM"):
                experiment, branch = SOURCES[(head, kind)]
                found[kind] = rows[experiment].get((method, branch))
            for kind in ("CAM", "ReCAM"):
                row = found[kind]
                cells.append("-" if row is None else f"{row['mIoU']:.2f}")
            for kind in ("CAM", "ReCAM"):
                row = found[kind]
                cells.append("-" if row is None else
                             f"{row['mIoU (best t, chosen on GT)']:.2f} ({row['best t']:.2f})")
            lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    threshold = next(iter(next(iter(rows.values())).values()))["threshold"]
    return "\n".join(text) + (f"\n(mIoU at background score t={threshold:g}; best: the sweep's "
                              f"best t, chosen on the ground truth)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the --root of the runs")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    try:
        print(table(args.root, args.split))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

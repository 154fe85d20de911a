"""Benchmark: a seed evaluation against the cost of its maps alone.

Seed maps are made at every image's own size (SYNTH_ML's images are 77-96 px
on each side, VOC's hundreds of sizes), at every test-time scale with a flip.
Three runs over the same test images, taking turns, medians over rounds:

  maps alone       wsol.seeds.seed_maps on images already in memory: the floor
  seed evaluation  the pipeline's seed pass (loader, maps, SegmentationEvaluator
                   per method and branch) from a model not checked yet
  checked per size the maps alone with the model checked again for every new
                   image size (what a check cached per input size costs)

    python scripts/bench_seeds.py                    # SYNTH_ML test split, ResNet18
    python scripts/bench_seeds.py --scales 1.0,0.5,1.5,2.0 --rounds 3

Goal: seed evaluation / maps alone <= 1.2.  The model has random weights (its
cost does not depend on them); SYNTH_ML is generated in a temporary folder
unless --data_root / --metadata_root hold it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from wsol.architectures import build_cam_model
from wsol.cams import resolve_methods
from wsol.data.datasets import DATASETS
from wsol.data.loaders import LoaderSettings, get_data_loader
from wsol.data.metadata import configure_metadata
from wsol.data.synth_ml import ensure_synth_ml
from wsol.metrics import METRICS, EvalContext, EvaluatorSet
from wsol.pipeline import SeedPass
from wsol.seeds import seed_maps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_root", default=None,
                   help="folder holding SYNTH_ML/ (default: a temporary folder)")
    p.add_argument("--metadata_root", default=None, help="metadata folder of --data_root")
    p.add_argument("--architecture", default="resnet18", help="the network (random weights)")
    p.add_argument("--methods", default="cam,gradcam", help="CAM methods, comma-separated")
    p.add_argument("--branches", default="softmax,sigmoid", help="branches of the b2 model")
    p.add_argument("--scales", default="1.0,0.5,1.5,2.0",
                   help="test-time scales, each with a flip (ReCAM's)")
    p.add_argument("--images", type=int, default=0, help="test images to use (0: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each figure is a median")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_grad_enabled(True)
    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data_root or os.path.join(tmp, "dataset")
        metadata_root = args.metadata_root or os.path.join(tmp, "metadata")
        ensure_synth_ml(data_root, metadata_root)
        return _bench(args, data_root, metadata_root)


def _bench(args, data_root: str, metadata_root: str) -> int:
    device = torch.device("cpu")
    torch.manual_seed(0)
    model, spec = build_cam_model(args.architecture, 8)
    model.add_sigmoid_branch("random").eval()
    methods = resolve_methods(args.methods)
    branches = args.branches.split(",")
    scales = tuple(float(s) for s in args.scales.split(","))
    loader = get_data_loader(
        {"test": os.path.join(data_root, "SYNTH_ML")}, os.path.join(metadata_root, "SYNTH_ML"),
        LoaderSettings(1, 0, mean=spec.mean, std=spec.std, multi_label=True, keep_size=True),
        splits=("test",), num_classes=8, train_split="")["test"]
    batches = [b for _, b in zip(range(args.images or len(loader)), loader)]
    images = [(image[None], torch.nonzero(hot > 0)[:, 0].tolist())
              for images_, labels, _ in batches for image, hot in zip(images_, labels)]
    sizes = {tuple(i.shape[-2:]) for i, _ in images}
    print(f"{len(images)} SYNTH_ML test images in {len(sizes)} sizes, {args.architecture}, "
          f"methods {args.methods} on {args.branches}, scales {args.scales} with flips")

    def maps_alone(per_size_check: bool) -> float:
        model.verified.clear()
        seed_maps(model, *images[0], methods, branches, scales)  # the one check, not timed
        seen: set = set()
        start = time.perf_counter()
        for image, classes in images:
            if per_size_check and tuple(image.shape[-2:]) not in seen:
                seen.add(tuple(image.shape[-2:]))
                model.verified.clear()
            seed_maps(model, image, classes, methods, branches, scales)
        return time.perf_counter() - start

    context = EvalContext(dataset=DATASETS["SYNTH_ML"], split="test",
                          metadata=configure_metadata(
                              os.path.join(metadata_root, "SYNTH_ML", "test")),
                          mask_folder=os.path.join(data_root, "SYNTH_ML"), num_classes=8,
                          thresholds=(0.0,))
    pairs = [(m.name, b) for b in branches for m in methods]

    def evaluation() -> float:
        model.verified.clear()
        subset = torch.utils.data.Subset(loader.dataset, range(len(batches)))
        seeds = SeedPass(model, torch.utils.data.DataLoader(subset, batch_size=1, num_workers=0,
                                                            collate_fn=loader.collate_fn),
                         EvaluatorSet(METRICS, context, pairs), methods, branches, device,
                         scales, show_progress=False)
        start = time.perf_counter()
        seeds.run()
        return time.perf_counter() - start

    runs = {"maps alone": lambda: maps_alone(False), "seed evaluation": evaluation,
            "checked per size": lambda: maps_alone(True)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(run())
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"  {name:17s} {value:7.2f} s  ({value / median['maps alone']:.2f}x maps alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

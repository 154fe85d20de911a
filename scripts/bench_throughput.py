"""Images/second of fine-tuning and evaluation, beside the backbone's own
forward and forward+backward throughput on the same model and batch.

    python scripts/bench_throughput.py                       # VGG16, ResNet50, InceptionV3
    python scripts/bench_throughput.py --amp --channels_last --compile
    python scripts/bench_throughput.py --archs resnet18 --image_size 64 \\
        --batch_size 8 --steps 3 --warmup 1 --data memory    # a quick CPU run

For each architecture (random weights: timing does not depend on them), at
its standard input size (224 px; 299 for InceptionV3) unless --image_size:

  forward      the dual-branch model under inference mode, eval mode: the
               floor of any pass over the data.
  fwd+bwd      the vanilla model in training mode, every weight requiring
               grad: forward, cross-entropy, backward (no optimiser step).
  fine-tune    wsol.runtime.training.train_one_epoch on the b2 model (frozen
               backbone, sigmoid branch trained with the class-balanced BCE,
               SGD step), from the data source.
  evaluate     wsol.pipeline.MapPass with --method on --cam_branch: CAMs,
               bicubic resize, normalisation, MaxBoxAccV2 / GT-known / Top-1
               Loc counts at --cam_curve_interval, until the counts are final.

Data sources (--data): ``memory``, the same normalised batch over and over
(the model and the evaluator only); ``disk``, JPEGs of --disk_image_size
written to a temporary folder and read by the project's DataLoader (decoding,
resizing and augmentation in --workers processes, pinned memory).

Printed ratios: fine-tune / forward (goal on a GPU: >= 0.9) and evaluate /
fwd+bwd (goal: >= 0.7).  Every figure is images/second: after --warmup
batches of each run (compilation, cuDNN autotuning and loader start-up fall
there), the runs take turns for --rounds rounds of --steps batches each and
each figure is the median of its rounds.  --json writes them all.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# The shared flags are main.py's (config.py, at the repository root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
from wsol.architectures import build_architecture  # noqa: E402
from wsol.cams import resolve_methods  # noqa: E402
from wsol.data.datasets import DatasetInfo  # noqa: E402
from wsol.data.loaders import LoaderSettings, get_data_loader  # noqa: E402
from wsol.data.metadata import GroundTruth, configure_metadata  # noqa: E402
from wsol.metrics import METRICS, EvalContext, EvaluatorSet  # noqa: E402
from wsol.model import CAMModel  # noqa: E402
from wsol.pipeline import MapPass  # noqa: E402
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD, make_threshold_list  # noqa: E402
from wsol.runtime.acceleration import Acceleration, autocast, check_amp, prepare_model  # noqa: E402,E501
from wsol.runtime.training import OptimConfig, build_optimizer, train_one_epoch  # noqa: E402

STANDARD_SIZE = {"inception_v3": 299}  # every other architecture: 224
DEFAULT_METHODS = "cam,gradcam,gradcam++,xgradcam,layercam"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------
def build_models(arch: str, classes: int, device: torch.device,
                 accel: Acceleration) -> tuple[CAMModel, CAMModel]:
    """(b2 model with frozen backbone, vanilla model with every weight trainable)."""
    torch.manual_seed(0)
    base, spec = build_architecture(arch, classes)
    vanilla = CAMModel(base, spec.feature_layer, spec.head, arch)
    torch.manual_seed(0)
    base2, _ = build_architecture(arch, classes)
    dual = CAMModel(base2, spec.feature_layer, spec.head, arch).add_sigmoid_branch()
    dual.freeze_backbone()
    return prepare_model(dual, device, accel), prepare_model(vanilla, device, accel)


def write_split(root: str, count: int, classes: int, size: tuple[int, int],
                jpegs: bool) -> tuple[str, str, list[str], list[int]]:
    """Metadata (wsolevaluation format) for ``count`` images, one box each, and
    optionally the JPEGs (smooth random images, so they compress like photos)."""
    rng = np.random.default_rng(0)
    width, height = size
    ids = [f"images/{i:05d}.jpg" for i in range(count)]
    labels = [int(i % classes) for i in range(count)]
    meta = os.path.join(root, "metadata")
    for split in ("train", "test"):
        os.makedirs(os.path.join(meta, split), exist_ok=True)
        lines = {"image_ids.txt": ids,
                 "class_labels.txt": [f"{i},{c}" for i, c in zip(ids, labels)],
                 "image_sizes.txt": [f"{i},{width},{height}" for i in ids],
                 "localization.txt": [f"{i},{width // 4},{height // 4},{3 * width // 4},"
                                      f"{3 * height // 4}" for i in ids]}
        for name, content in lines.items():
            with open(os.path.join(meta, split, name), "w") as f:
                f.write("\n".join(content) + "\n")
    images = os.path.join(root, "images_root")
    if jpegs:
        from PIL import Image
        os.makedirs(os.path.join(images, "images"), exist_ok=True)
        for image_id in ids:
            small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
            picture = Image.fromarray(small).resize((width, height), Image.BICUBIC)
            picture.save(os.path.join(images, image_id), quality=90)
    return meta, images, ids, labels


def normalised_batch(batch_size: int, image_size: int, device: torch.device,
                     accel: Acceleration) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images - mean) / std).to(device, memory_format=accel.memory_format)


def memory_batches(ids: list[str], labels: list[int], batch_size: int, image_size: int,
                   device: torch.device, accel: Acceleration) -> list:
    """Normalised random batches already on the device (what a perfect loader gives)."""
    images = normalised_batch(batch_size, image_size, device, accel)
    batches = []
    for start in range(0, len(ids) - batch_size + 1, batch_size):
        batches.append((images, torch.tensor(labels[start:start + batch_size]).to(device),
                        ids[start:start + batch_size]))
    return batches


class Batches:
    """The next ``n`` batches of a shared endless iterator, looking like a
    DataLoader to the training and evaluation loops."""

    def __init__(self, iterator, n: int, batch_size: int):
        self.iterator, self.n = iterator, n
        self.sampler = range(n * batch_size)  # the pass counts the images it expects

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.iterator)


def endless(data):
    while True:
        yield from data


# ---------------------------------------------------------------------------
# The four measurements
# ---------------------------------------------------------------------------
def measure(arch: str, args, device: torch.device, accel: Acceleration) -> dict:
    size = args.image_size or STANDARD_SIZE.get(arch, 224)
    dual, vanilla = build_models(arch, args.num_classes, device, accel)
    # The very batch the in-memory runs use: random weights and inputs of
    # another distribution can run at another speed on CPUs (denormals).
    x = normalised_batch(args.batch_size, size, device, accel)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)

    def forward(n: int) -> None:
        dual.eval()
        with torch.inference_mode(), autocast(device, accel):
            for _ in range(n):
                dual(x)

    def forward_backward(n: int) -> None:
        vanilla.train()
        for _ in range(n):
            with autocast(device, accel):
                logits = vanilla(x)["logits"]
            F.cross_entropy(logits.float(), y).backward()
            vanilla.zero_grad(set_to_none=True)

    runs = {"forward": forward, "fwd+bwd": forward_backward}
    total = (args.warmup + args.rounds * args.steps) * args.batch_size
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as root:
        for source in args.data:
            meta, image_root, ids, labels = write_split(
                os.path.join(root, source), total, args.num_classes, args.disk_image_size,
                jpegs=source == "disk")
            if source == "memory":
                train_data = eval_data = memory_batches(ids, labels, args.batch_size, size,
                                                        device, accel)
            else:
                settings = LoaderSettings(
                    args.batch_size, args.workers, size + size // 7, size,
                    prefetch_factor=args.prefetch_factor,
                    decode_device=device if args.decode_on_device else None)
                loaders = get_data_loader({"train": image_root, "test": image_root}, meta,
                                          settings, splits=("train", "test"),
                                          num_classes=args.num_classes)
                train_data, eval_data = loaders["train"], loaders["test"]
            runs[f"fine-tune ({source})"] = finetune_run(dual, train_data, args, device, accel)
            runs[f"evaluate ({source})"] = evaluate_run(dual, eval_data, meta, args, device,
                                                        accel)
        rates = round_robin(runs, args, device)
    return {"architecture": arch, "image_size": size, "batch_size": args.batch_size, **rates}


def round_robin(runs: dict[str, Callable[[int], None]], args,
                device: torch.device) -> dict[str, float]:
    """Median images/s of each run over --rounds rounds, the runs taking turns
    within a round: whatever drifts during the benchmark (clocks, other
    processes, allocator and kernel caches warming up) hits them alike."""
    for run in runs.values():  # warm-up: compilation, autotuning, worker start-up
        if args.warmup:
            run(args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            sync(device)
            start = time.perf_counter()
            run(args.steps)
            sync(device)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def finetune_run(model: CAMModel, data, args, device: torch.device,
                 accel: Acceleration) -> Callable[[int], None]:
    """n fine-tuning steps of the sigmoid branch per call."""
    optimizer = build_optimizer(model, OptimConfig(lr=0.001))
    iterator = endless(data)
    logging.getLogger("wsol.runtime.training").setLevel(logging.WARNING)

    def run(n: int) -> None:
        train_one_epoch(model, Batches(iterator, n, args.batch_size), optimizer, device,
                        epoch=0, show_progress=False, accel=accel)
    return run


def evaluate_run(model: CAMModel, data, metadata_root: str, args, device: torch.device,
                 accel: Acceleration) -> Callable[[int], None]:
    """n batches scored per call (the pipeline's pass: maps into the box
    evaluators), until the evaluator's counts are final."""
    methods = resolve_methods(args.method)
    branches = [b.strip() for b in args.cam_branch.split(",") if b.strip()]
    metadata = configure_metadata(os.path.join(metadata_root, "test"))
    context = EvalContext(dataset=DatasetInfo("bench", args.num_classes, ("boxes",)),
                          split="test", metadata=metadata, mask_folder="",
                          num_classes=args.num_classes,
                          thresholds=make_threshold_list(args.cam_curve_interval),
                          ground_truth=GroundTruth(metadata))
    pairs = [(m.name, b) for b in branches for m in methods]
    iterator = endless(data)

    def run(n: int) -> None:
        MapPass(model, Batches(iterator, n, args.batch_size),
                EvaluatorSet(METRICS, context, pairs), methods, branches, device,
                accel=accel, show_progress=False).run()
    return run


# ---------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="vgg16,resnet50,inception_v3",
                   help="networks, comma-separated")
    p.add_argument("--image_size", type=int, default=None,
                   help="input size (default: 224, 299 for inception_v3)")
    p.add_argument("--steps", type=int, default=20, help="timed batches per run and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds; each run's figure is its median over them")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches of each run first")
    p.add_argument("--data", default="memory,disk", help="memory, disk or memory,disk")
    p.add_argument("--disk_image_size", default="500x375", help="WxH of the JPEGs on disk")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--json", default=None, help="also write the figures here")
    config.add_flags(p, ("batch_size", "num_classes", "method", "cam_branch",
                         "cam_curve_interval", "workers", "prefetch_factor", "decode_on_device",
                         "amp", "channels_last", "compile"),
                     batch_size={"default": 64},
                     num_classes={"default": 1000, "help": "classes of the random head"},
                     method={"default": DEFAULT_METHODS},
                     cam_branch={"default": "sigmoid",
                                 "help": "the branches scored: sigmoid, softmax or "
                                         "softmax,sigmoid"},
                     cam_curve_interval={"default": 0.01})
    args = p.parse_args(argv)
    args.data = [d.strip() for d in args.data.split(",") if d.strip()]
    if not set(args.data) <= {"memory", "disk"}:
        p.error("--data takes memory, disk or memory,disk")
    try:
        width, height = (int(v) for v in args.disk_image_size.lower().split("x"))
    except ValueError:
        p.error("--disk_image_size must look like 500x375")
    args.disk_image_size = (width, height)
    if min(args.steps, args.batch_size, args.rounds) < 1 or args.warmup < 0:
        p.error("--steps, --rounds and --batch_size must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    accel = check_amp(device, Acceleration(args.amp, args.channels_last, args.compile))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; amp={accel.amp} "
          f"channels_last={accel.channels_last} compile={accel.compile} "
          f"decode_on_device={args.decode_on_device}; "
          f"batch {args.batch_size}; medians of {args.rounds} rounds of {args.steps} batches "
          f"after {args.warmup} warm-up batches")
    results = []
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        row = measure(arch, args, device, accel)
        results.append(row)
        print(f"\n{arch} at {row['image_size']} px, images/s:")
        print(f"  forward {row['forward']:.1f}   fwd+bwd {row['fwd+bwd']:.1f}")
        for source in args.data:
            tune, score = row[f"fine-tune ({source})"], row[f"evaluate ({source})"]
            row[f"fine-tune / forward ({source})"] = tune / row["forward"]
            row[f"evaluate / fwd+bwd ({source})"] = score / row["fwd+bwd"]
            print(f"  {source:6s}: fine-tune {tune:.1f} = {tune / row['forward']:.2f}x forward "
                  f"(goal 0.90); evaluate {score:.1f} = {score / row['fwd+bwd']:.2f}x fwd+bwd "
                  f"(goal 0.70)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "amp": accel.amp, "channels_last": accel.channels_last,
                       "compile": accel.compile, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()

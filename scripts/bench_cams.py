"""Time the CAM methods: all gradient methods together vs one at a time vs a
plain forward+backward of the same batch.

    python scripts/bench_cams.py --archs resnet50,vgg16 --batch_size 8 --repeats 5

Every variant runs once per round, round-robin, so that load from other
processes hits them alike; the figures are medians over the rounds.

Variants (dual-branch model, frozen backbone, eval mode, sigmoid branch as at
inference time; random weights -- timing does not depend on them):
  forward          model(x) under no_grad: the floor.
  fwd+bwd (input)  forward with autograd + backward of the target logits to
                   the input (frozen weights: what a CAM library that hooks
                   the layer and backpropagates through the whole net pays).
  fwd+bwd (train)  forward + backward with every weight requiring grad (a
                   training step without the optimiser): the reference of the
                   1.3x goal.
  together         compute_cams(methods=cam + the five gradient methods).
  one at a time    the sum of compute_cams(method) over those six methods,
                   each with its own forward (and backward).
  --extra adds eigencam, smoothgradcam++ (8 samples) and scorecam (top-k).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

# The shared flags are main.py's (config.py, at the repository root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsol.architectures import build_architecture
from wsol.cams import ScoreCAM, SmoothGradCAMPlusPlus, compute_cams
from wsol.model import CAMModel

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(arch: str, classes: int, device: torch.device) -> CAMModel:
    """A dual-branch model with a frozen backbone, in eval mode, as at inference."""
    torch.manual_seed(0)
    base, spec = build_architecture(arch, classes)
    model = CAMModel(base, spec.feature_layer, spec.head, arch).add_sigmoid_branch()
    model.freeze_backbone()
    model.to(device).eval()
    return model


def variants(model: CAMModel, x: torch.Tensor, targets: torch.Tensor, extra: bool,
             topk: int, smooth_samples: int) -> dict:
    def forward():
        with torch.no_grad():
            model(x)

    def fwd_bwd_input():
        xi = x.clone().requires_grad_(True)
        out = model(xi)["logits_sigmoid"]
        out.gather(1, targets[:, None]).sum().backward()

    def fwd_bwd_train():
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            out = model(x)["logits_sigmoid"]
            out.gather(1, targets[:, None]).sum().backward()
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
                p.grad = None

    def together():
        compute_cams(model, x, targets, methods=["cam"] + GRADIENT_METHODS)

    def single(method):
        return lambda: compute_cams(model, x, targets, methods=[method])

    runs = {"forward": forward, "fwd+bwd (input)": fwd_bwd_input,
            "fwd+bwd (train)": fwd_bwd_train, "together": together}
    for m in ["cam"] + GRADIENT_METHODS:
        runs[f"only {m}"] = single(m)
    if extra:
        runs["only eigencam"] = single("eigencam")
        runs[f"only smoothgradcam++ (n={smooth_samples})"] = single(
            SmoothGradCAMPlusPlus(samples=smooth_samples))
        runs[f"only scorecam (top-{topk})"] = single(ScoreCAM(batch_size=32, topk=topk))
    return runs


def bench(arch: str, args, device: torch.device) -> dict[str, float]:
    model = build(arch, args.num_classes, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g).to(device)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
    runs = variants(model, x, targets, args.extra, args.scorecam_topk, args.smooth_samples)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(args.warmup + args.repeats):
        for name, fn in runs.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(arch: str, med: dict[str, float]) -> None:
    ref = med["fwd+bwd (train)"]
    separate = sum(v for k, v in med.items() if k.startswith("only ") and
                   k[5:] in ["cam"] + GRADIENT_METHODS)
    print(f"\n{arch}")
    print(f"  {'variant':34s} {'median s':>9s} {'/ fwd+bwd':>10s} {'/ forward':>10s}")
    for name, t in med.items():
        print(f"  {name:34s} {t:9.3f} {t / ref:10.2f} {t / med['forward']:10.2f}")
    print(f"  {'one at a time, sum of 6':34s} {separate:9.3f} {separate / ref:10.2f} "
          f"{separate / med['forward']:10.2f}")
    print(f"  together / fwd+bwd (train) = {med['together'] / ref:.2f}  "
          f"(goal <= 1.3);  together / fwd+bwd (input) = "
          f"{med['together'] / med['fwd+bwd (input)']:.2f};  "
          f"one at a time / together = {separate / med['together']:.2f}")


def main(argv: list[str] | None = None) -> None:
    import config
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="resnet50,vgg16", help="networks, comma-separated")
    p.add_argument("--size", type=int, default=224, help="input size in pixels")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (figures: medians)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--extra", action="store_true",
                   help="also time eigencam, smoothgradcam++ and scorecam")
    config.add_flags(p, ("batch_size", "num_classes", "scorecam_topk", "smooth_samples"),
                     batch_size={"default": 8},
                     num_classes={"default": 1000, "help": "classes of the random head"},
                     scorecam_topk={"default": 64, "help": "scorecam: score only the k "
                                    "channels of largest mean activation"})
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, {args.size} px, {args.num_classes} classes, "
          f"median of {args.repeats} rounds (+{args.warmup} warm-up)")
    for arch in args.archs.split(","):
        report(arch, bench(arch.strip(), args, device))


if __name__ == "__main__":
    main()

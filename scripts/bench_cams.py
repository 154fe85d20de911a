"""Time the CAM methods: every weight/gradient method together, each method
alone, and each method against its reference library on the same model and
batch, in one run.

    python scripts/bench_cams.py --archs resnet50 --batch_size 8 --repeats 5
    python scripts/bench_cams.py --archs resnet50 --batch_size 8 --libraries
    python scripts/bench_cams.py --archs resnet18 --batch_size 2 --size 112 \\
        --perturbation --libraries --perturbation_samples 2

Every variant runs once per round, round-robin, so that load from other
processes hits them alike; the figures are medians over the rounds (the
perturbation methods and the libraries' slow ones: ``--slow_repeats``).

Variants (random weights: timing does not depend on them):
  forward           model(x) under no_grad: the floor.
  fwd+bwd (train)   forward + backward of the target logits with every weight
                    requiring grad (a training step without the optimiser):
                    the reference of the goals.
  together          compute_cams(every weight/gradient method: cam, gradcam,
                    gradcam++, xgradcam, layercam, hirescam, eigencam,
                    eigengradcam, fem, finercam, fullgrad, gradcamelementwise,
                    kpcacam, shapleycam, refinecam), dual-branch model, sigmoid
                    branch, frozen backbone: the goal is <= 1.3x fwd+bwd (train).
  <method>          compute_cams of that method alone, same model.
  --perturbation    also scorecam, ablationcam, sscam, iscam (samples as
                    --perturbation_samples, the same for the library).
  --libraries       each method that pytorch-grad-cam 1.5.7 or torchcam 0.5.0
                    has, ours and theirs on the *plain* network (softmax head:
                    the libraries have no branch), targets = the top-1 class.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

# The shared flags are main.py's (config.py, at the repository root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsol.architectures import build_architecture
from wsol.cams import ISCAM, SSCAM, AblationCAM, ScoreCAM, compute_cams
from wsol.cams.multilayer import refine_layers
from wsol.model import CAMModel

WEIGHT_AND_GRADIENT = ["cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
                       "eigencam", "eigengradcam", "fem", "finercam", "fullgrad",
                       "gradcamelementwise", "kpcacam", "shapleycam", "refinecam"]
PERTURBATION = ["scorecam", "ablationcam", "sscam", "iscam"]

# Our method -> (library, its class name).
PGC = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
       "layercam": "LayerCAM", "hirescam": "HiResCAM", "eigencam": "EigenCAM",
       "eigengradcam": "EigenGradCAM", "fem": "FEM", "finercam": "FinerCAM",
       "fullgrad": "FullGrad", "gradcamelementwise": "GradCAMElementWise",
       "kpcacam": "KPCA_CAM", "shapleycam": "ShapleyCAM", "refinecam": "RefineCAM",
       "ablationcam": "AblationCAM", "scorecam": "ScoreCAM"}
TORCHCAM = {"sscam": "SSCAM", "iscam": "ISCAM"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(arch: str, classes: int, device: torch.device) -> tuple[CAMModel, CAMModel]:
    """(a dual-branch model with a frozen backbone, the plain network), in eval mode."""
    torch.manual_seed(0)
    base, spec = build_architecture(arch, classes)
    dual = CAMModel(base, spec.feature_layer, spec.head, arch).add_sigmoid_branch()
    dual.freeze_backbone()
    torch.manual_seed(0)
    plain_base, _ = build_architecture(arch, classes)
    plain = CAMModel(plain_base, spec.feature_layer, spec.head, arch)
    return dual.to(device).eval(), plain.to(device).eval()


def perturbation_method(name: str, samples: int, batch_size: int):
    return {"scorecam": lambda: ScoreCAM(batch_size=batch_size),
            "ablationcam": lambda: AblationCAM(batch_size=batch_size),
            "sscam": lambda: SSCAM(samples=samples, batch_size=batch_size),
            "iscam": lambda: ISCAM(samples=samples, batch_size=batch_size)}[name]()


def library_call(name: str, plain: CAMModel, x: torch.Tensor, samples: int,
                 batch_size: int) -> Callable[[], None] | None:
    """The library's call for a method on the plain network, or None."""
    net = plain.model
    layer = plain.feature_module
    if name in TORCHCAM:
        try:
            from torchcam import methods as tc
        except ImportError:
            return None
        cls = getattr(tc, TORCHCAM[name])

        def run():
            with cls(net, plain.feature_layer_name, batch_size=batch_size, num_samples=samples,
                     input_shape=tuple(x.shape[1:])) as cam:
                with torch.no_grad():
                    scores = net(x)
                cam(scores.argmax(1).tolist())
        return run
    if name not in PGC:
        return None
    try:
        import pytorch_grad_cam as pgc
    except ImportError:
        return None
    cls = getattr(pgc, PGC[name])
    if name == "refinecam":
        layers = [net.get_submodule(n) for n in refine_layers(plain)]
        return lambda: cls(net, layers)(x, None)

    def run():
        kwargs = {"batch_size": batch_size} if name == "ablationcam" else {}
        with cls(net, [] if name == "fullgrad" else [layer], **kwargs) as cam:
            if hasattr(cam, "batch_size"):
                cam.batch_size = batch_size
            cam(x, None)
    return run


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench(arch: str, args, device: torch.device) -> None:
    dual, plain = build(arch, args.num_classes, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g).to(device)
    targets = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)

    def fwd_bwd_train():
        params = list(dual.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            out = dual(x)["logits_sigmoid"]
            out.gather(1, targets[:, None]).sum().backward()
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
                p.grad = None

    def forward():
        with torch.no_grad():
            dual(x)

    fast = {"forward": forward, "fwd+bwd (train)": fwd_bwd_train,
            "together": lambda: compute_cams(dual, x, targets, methods=WEIGHT_AND_GRADIENT)}
    for name in WEIGHT_AND_GRADIENT:
        fast[name] = lambda n=name: compute_cams(dual, x, targets, methods=[n])
    slow = {}
    if args.perturbation:
        for name in PERTURBATION:
            slow[name] = lambda n=name: compute_cams(dual, x, targets, methods=[
                perturbation_method(n, args.perturbation_samples, args.perturbation_batch)])
    lib_pairs = {}
    if args.libraries:
        names = WEIGHT_AND_GRADIENT + (PERTURBATION if args.perturbation else [])
        for name in names:
            theirs = library_call(name, plain, x, args.perturbation_samples,
                                  args.perturbation_batch)
            if theirs is None:
                continue
            method = (perturbation_method(name, args.perturbation_samples,
                                          args.perturbation_batch)
                      if name in PERTURBATION else name)
            lib_pairs[name] = (lambda m=method: compute_cams(plain, x, None, methods=[m]),
                               theirs)
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    for round_ in range(args.warmup + args.repeats):
        counted = round_ >= args.warmup
        for name, fn in fast.items():
            t = timed(fn, device)
            if counted:
                record(name, t)
        for name, (mine, theirs) in lib_pairs.items():
            if name not in PERTURBATION:
                t_ours, t_lib = timed(mine, device), timed(theirs, device)
                if counted:
                    record(f"ours {name}", t_ours)
                    record(f"lib {name}", t_lib)
    # The perturbation methods: no warm-up (one of their calls is thousands of forwards).
    for _ in range(args.slow_repeats):
        for name, fn in slow.items():
            record(name, timed(fn, device))
            if name in lib_pairs:
                mine, theirs = lib_pairs[name]
                record(f"ours {name}", timed(mine, device))
                record(f"lib {name}", timed(theirs, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    report(arch, args, med)


def report(arch: str, args, med: dict[str, float]) -> None:
    ref = med["fwd+bwd (train)"]
    print(f"\n{arch}: fwd+bwd (train) {ref:.3f} s, forward {med['forward']:.3f} s")
    print(f"  together ({len(WEIGHT_AND_GRADIENT)} weight/gradient methods): "
          f"{med['together']:.3f} s = {med['together'] / ref:.2f}x fwd+bwd (goal <= 1.3)")
    alone = sum(med[m] for m in WEIGHT_AND_GRADIENT)
    print(f"  one at a time, sum of {len(WEIGHT_AND_GRADIENT)}: {alone:.3f} s = "
          f"{alone / med['together']:.2f}x together")
    print(f"  {'method':20s} {'alone s':>9s} {'/fwd+bwd':>9s} {'ours s':>9s} {'library s':>10s}"
          f" {'lib/ours':>9s}")
    for name in WEIGHT_AND_GRADIENT + (PERTURBATION if args.perturbation else []):
        row = f"  {name:20s} {med[name]:9.3f} {med[name] / ref:9.2f}"
        if f"lib {name}" in med:
            ours, lib = med[f"ours {name}"], med[f"lib {name}"]
            row += f" {ours:9.3f} {lib:10.3f} {lib / ours:9.2f}"
        print(row)


def main(argv: list[str] | None = None) -> None:
    import config
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="resnet50", help="networks, comma-separated")
    p.add_argument("--size", type=int, default=224, help="input size in pixels")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (figures: medians)")
    p.add_argument("--slow_repeats", type=int, default=1,
                   help="timed rounds of the perturbation methods (ours and the libraries')")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--perturbation", action="store_true",
                   help="also time scorecam, ablationcam, sscam and iscam (slow: one "
                        "forward per channel and sample)")
    p.add_argument("--perturbation_samples", type=int, default=2,
                   help="sscam/iscam samples (ours and the library's alike)")
    p.add_argument("--perturbation_batch", type=int, default=32,
                   help="perturbed inputs per forward (ours and the library's alike)")
    p.add_argument("--libraries", action="store_true",
                   help="also time pytorch-grad-cam 1.5.7 / torchcam 0.5.0 on the same batch")
    config.add_flags(p, ("batch_size", "num_classes"), batch_size={"default": 8},
                     num_classes={"default": 1000, "help": "classes of the random head"})
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, {args.size} px, {args.num_classes} classes, "
          f"median of {args.repeats} rounds (+{args.warmup} warm-up)")
    for arch in args.archs.split(","):
        bench(arch.strip(), args, device)


if __name__ == "__main__":
    main()

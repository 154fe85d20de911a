"""Speed paths: --amp, --channels_last, --compile, the branch-only
fine-tuning forward, one forward for both branches, the evaluator's deferred
host copies and seeded augmentation with persistent workers.

Tolerances stated here (and in docs/PERFORMANCE.md): channels-last and
compiled runs give the same box metrics as the plain run and PxAP within
0.01 points (float rounding); their maps agree within 1e-4.  bf16 autocast
(--amp) moves evaluation maps by at most 0.05 (mean absolute difference,
maps in [0, 1]), PxAP by at most 0.1 points and the box metrics by at most
one image's verdict (100 / N points; measured: one image at one IoU
threshold of one method, 3.3 points on MaxBoxAccV2, and PxAP within 0.02).
"""
import os
import shutil

import numpy as np
import pytest
import torch

import config
import main
import wsol.metrics.boxes as boxes_module
from data_loaders import ImageLoadError, LoaderSettings, get_data_loader
from tests.conftest import copy_as_dataset
from tests.test_robustness import tiny_argv
from tests.test_cams import TinyNet
from wsol.runtime.acceleration import Acceleration, autocast, compiled_blocks, prepare_model
from wsol.architectures import build_architecture
from wsol.cams import (ScoreCAM, SmoothGradCAMPlusPlus, compute_cams, compute_cams_per_branch,
                       evaluation_maps)
from wsol.model import CAMModel
from wsol.dual_branch import class_balanced_bce

GRADIENT_METHODS = ["cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def dual_resnet18(classes=5, seed=0) -> CAMModel:
    torch.manual_seed(seed)
    base, spec = build_architecture("resnet18", classes, large_feature_map=True)
    model = CAMModel(base, spec.feature_layer, spec.head, "resnet18").add_sigmoid_branch()
    model.freeze_backbone()
    return model.eval()


def tiny_dual(seed=0) -> CAMModel:
    torch.manual_seed(seed)
    model = CAMModel(TinyNet(k=6, classes=3), "act", "fc", "tiny").add_sigmoid_branch()
    model.freeze_backbone()
    return model.eval()


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------
def test_compiled_blocks_leave_the_hooked_modules_eager():
    model = dual_resnet18()
    # layer4 is the CAM layer and fc the head: their hooks stay outside
    # compiled graphs; layer4's blocks and everything before are compiled.
    assert compiled_blocks(model) == ["conv1", "bn1", "layer1", "layer2", "layer3",
                                      "layer4.0", "layer4.1"]
    assert compiled_blocks(tiny_dual()) == ["conv1", "conv2"]


def test_compiled_model_gives_the_same_maps_and_training_step():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    eager, compiled = tiny_dual(), tiny_dual()
    compiled = prepare_model(compiled, torch.device("cpu"), Acceleration(compile=True))
    # Parameter names (checkpoints) do not change.
    assert list(compiled.state_dict()) == list(eager.state_dict())
    for branch in ("softmax", "sigmoid"):
        a = compute_cams(eager, x, y, GRADIENT_METHODS, branch)
        b = compute_cams(compiled, x, y, GRADIENT_METHODS, branch)
        for method in GRADIENT_METHODS:
            torch.testing.assert_close(b.maps[method], a.maps[method], rtol=1e-5, atol=1e-6)
    grads = []
    for model in (eager, compiled):
        model.train()
        loss = class_balanced_bce(model(x)["logits_sigmoid"], y)
        loss.backward()
        grads.append(model.fc2.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Fine-tuning forward
# ---------------------------------------------------------------------------
def _saved_tensor_count(fn) -> int:
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return count


def test_branch_only_fine_tuning_records_no_backbone_graph():
    model = dual_resnet18().train()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)  # even an input that requires grad
    y = torch.tensor([1, 3])
    out = {}
    saved = _saved_tensor_count(lambda: out.update(model(x)))
    assert saved <= 3  # fc2's input and weight; nothing of the backbone
    assert torch.is_grad_enabled()  # restored after the forward
    class_balanced_bce(out["logits_sigmoid"], y).backward()
    assert x.grad is None and model.fc2.weight.grad is not None
    # The same gradient as recording everything (the plain forward).
    reference = dual_resnet18().train()
    reference._only_branch_trains = False
    assert _saved_tensor_count(lambda: out.update(reference(x))) > 50
    class_balanced_bce(out["logits_sigmoid"], y).backward()
    torch.testing.assert_close(model.fc2.weight.grad, reference.fc2.weight.grad)
    # With a backbone layer unfrozen, the backbone is recorded again.
    unfrozen = dual_resnet18()
    unfrozen.freeze_backbone(("fc2", "model.layer4"))
    assert not unfrozen._only_branch_trains


# ---------------------------------------------------------------------------
# Both branches from one forward
# ---------------------------------------------------------------------------
def test_both_branches_from_one_forward_equal_one_call_per_branch():
    model = dual_resnet18()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 4, 2])
    methods = GRADIENT_METHODS + ["eigencam", ScoreCAM(topk=2), SmoothGradCAMPlusPlus(samples=2)]
    compute_cams_per_branch(model, x, y, GRADIENT_METHODS, ["softmax", "sigmoid"])  # checks
    forwards = []
    handle = model.model.register_forward_hook(lambda *a: forwards.append(1))
    together = compute_cams_per_branch(model, x, y, GRADIENT_METHODS, ["softmax", "sigmoid"])
    assert len(forwards) == 1
    together = compute_cams_per_branch(model, x, y, methods, ["softmax", "sigmoid"])
    handle.remove()
    for branch in ("softmax", "sigmoid"):
        alone = compute_cams(model, x, y, methods, branch)
        assert together[branch].branch == branch
        for method in together[branch].maps:
            torch.testing.assert_close(together[branch].maps[method], alone.maps[method],
                                       rtol=0, atol=0)
        torch.testing.assert_close(together[branch].logits, alone.logits)
    with pytest.raises(ValueError, match="no sigmoid branch"):
        compute_cams_per_branch(CAMModel(*_vanilla_resnet18()), x, y, "cam", ["sigmoid"])


def _vanilla_resnet18():
    base, spec = build_architecture("resnet18", 5)
    return base.eval(), spec.feature_layer, spec.head


# ---------------------------------------------------------------------------
# bf16 autocast and channels-last on the maps
# ---------------------------------------------------------------------------
def test_amp_and_channels_last_maps_agree_with_float32():
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3])
    plain = dual_resnet18()
    nhwc = prepare_model(dual_resnet18(), torch.device("cpu"), Acceleration(channels_last=True))
    assert nhwc.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    for branch in ("softmax", "sigmoid"):
        reference = evaluation_maps(compute_cams(plain, x, y, GRADIENT_METHODS, branch),
                                    (64, 64))
        with autocast(cpu, Acceleration(amp=True)):
            amp = compute_cams(plain, x, y, GRADIENT_METHODS, branch)
        last = compute_cams(nhwc, x.contiguous(memory_format=torch.channels_last), y,
                            GRADIENT_METHODS, branch)
        assert amp.logits.dtype == torch.float32
        for method in GRADIENT_METHODS:
            assert amp.maps[method].dtype == torch.float32
            amp_maps = evaluation_maps(amp, (64, 64))[method]
            assert (amp_maps - reference[method]).abs().mean() < 0.05, (branch, method)
            torch.testing.assert_close(evaluation_maps(last, (64, 64))[method],
                                       reference[method], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------
# The evaluator's deferred host copies
# ---------------------------------------------------------------------------
class _SlowEvent:
    """Stands in for a CUDA event whose copy has not landed yet."""

    def __init__(self):
        self.waited = False

    def query(self):
        return False

    def synchronize(self):
        self.waited = True


def test_device_hand_off_scores_a_batch_whose_copy_lands_later(tiny_synth_root, monkeypatch):
    from wsol.data.metadata import configure_metadata, get_image_ids
    from wsol.metrics import BoxEvaluator
    from wsol.protocol import make_threshold_list
    metadata = configure_metadata(str(tiny_synth_root / "metadata/SYNTH/test"))
    ids = get_image_ids(metadata)
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((len(ids), 64, 64)).astype(np.float32))
    corrects = torch.from_numpy(rng.random(len(ids)) < 0.5)

    def evaluator():
        return BoxEvaluator(metadata, "SYNTH", "test", make_threshold_list(0.05),
                            resize_length=64, num_workers=1)

    direct = evaluator()
    direct.accumulate_batch(maps, ids, corrects, normalized=False)
    events = []

    class SlowBatch(boxes_module._HostBatch):  # a CUDA copy that has not landed yet
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.ready = _SlowEvent()
            events.append(self.ready)

    monkeypatch.setattr(boxes_module, "_HostBatch", SlowBatch)
    deferred = evaluator()
    hand_off = boxes_module.DeviceHandOff(deferred)
    half = len(ids) // 2
    hand_off.add(maps[:half], ids[:half], corrects[:half])
    assert len(hand_off._arriving) == 1 and not events[0].waited  # not waited for
    hand_off.add(maps[half:], ids[half:], corrects[half:])
    assert events[0].waited and len(hand_off._arriving) == 1  # handed over when the next came
    hand_off.finish()  # waits for the last one
    assert events[1].waited
    for key, value in direct.state().items():
        np.testing.assert_array_equal(deferred.state()[key], value, err_msg=key)


# ---------------------------------------------------------------------------
# Seeded augmentation
# ---------------------------------------------------------------------------
def _epochs(root, workers, epochs=2):
    loader = get_data_loader(
        {"train": str(root / "dataset/SYNTH")}, str(root / "metadata/SYNTH"),
        LoaderSettings(batch_size=4, workers=workers, resize_size=40, crop_size=32),
        splits=("train",), generator=torch.Generator().manual_seed(7))["train"]
    return [[(images.clone(), list(ids)) for images, _, ids in loader] for _ in range(epochs)]


def test_augmentations_do_not_depend_on_workers_or_their_lifetime(tiny_synth_root):
    single = _epochs(tiny_synth_root, workers=0)
    persistent = _epochs(tiny_synth_root, workers=2)  # workers kept across the two epochs
    for epoch_a, epoch_b in zip(single, persistent):
        for (images_a, ids_a), (images_b, ids_b) in zip(epoch_a, epoch_b):
            assert ids_a == ids_b
            assert torch.equal(images_a, images_b)
    # Each epoch draws new crops and flips (and a new order).
    first = {i: img for images, ids in single[0] for i, img in zip(ids, images)}
    second = {i: img for images, ids in single[1] for i, img in zip(ids, images)}
    assert sum(not torch.equal(first[i], second[i]) for i in first) > len(first) // 2


# ---------------------------------------------------------------------------
# Decoding on the device
# ---------------------------------------------------------------------------
def _as_jpeg_dataset(root, target):
    """The tiny SYNTH images re-encoded as JPEG bytes (same file names)."""
    from PIL import Image
    shutil.copytree(root / "dataset/SYNTH", target)
    for path in target.rglob("*.png"):
        Image.open(path).convert("RGB").save(path, format="JPEG", quality=95)
    return target


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_device_decoding_matches_the_pil_path_within_one_grey_level(tiny_synth_root, tmp_path,
                                                                    fmt, split):
    images = tiny_synth_root / "dataset/SYNTH"
    if fmt == "jpeg":
        images = _as_jpeg_dataset(tiny_synth_root, tmp_path / "jpeg")
    batches = []
    for device in (None, torch.device("cpu")):
        loader = get_data_loader(
            {split: str(images)}, str(tiny_synth_root / "metadata/SYNTH"),
            LoaderSettings(batch_size=4, workers=0, resize_size=72, crop_size=64,
                           decode_device=device),
            splits=(split,), generator=torch.Generator().manual_seed(3))[split]
        batches.append(list(loader))
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for (pil, labels_a, ids_a), (ours, labels_b, ids_b) in zip(*batches):
        assert ids_a == ids_b and torch.equal(labels_a, labels_b)
        # The same crops and flips (seeded per sample); resizing within one grey level.
        grey_levels = ((pil - ours) * std).abs() * 255
        assert grey_levels.max() <= 1.001 and grey_levels.mean() < 0.3


def test_device_decoding_names_or_skips_a_corrupt_jpeg(tiny_synth_root, tmp_path):
    images = _as_jpeg_dataset(tiny_synth_root, tmp_path / "jpeg")
    metadata = tiny_synth_root / "metadata/SYNTH"
    first = (metadata / "test/image_ids.txt").read_text().split()[0]
    data = (images / first).read_bytes()
    (images / first).write_bytes(data[:len(data) // 3])  # truncated JPEG
    settings = dict(batch_size=4, workers=0, resize_size=72, crop_size=64,
                    decode_device=torch.device("cpu"))
    loader = get_data_loader({"test": str(images)}, str(metadata), LoaderSettings(**settings),
                             splits=("test",))["test"]
    with pytest.raises(ImageLoadError, match=first):
        list(loader)
    loader = get_data_loader({"test": str(images)}, str(metadata),
                             LoaderSettings(**settings, skip_bad_images=True),
                             splits=("test",))["test"]
    ids = [i for _, _, batch_ids in loader for i in batch_ids]
    assert first not in ids and len(ids) == len(loader.dataset) - 1


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------
def _argv(root, name, *extra):
    return tiny_argv(root, name, "--method", "cam,gradcam,gradcam++",
                     "--cam_branch", "softmax,sigmoid", *extra)


METRICS = ("MaxBoxAccV2", "GT-known Loc", "Top-1 Loc", "PxAP")


def test_amp_channels_last_and_compile_on_the_cli(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    run = lambda *a: main.run(config.get_configs(_argv(tmp_path, *a)))  # noqa: E731
    run("vanilla", "--epochs", "2", "--lr", "0.05", "--cam_branch", "softmax", "--skip_eval")
    ckpt = str(tmp_path / "train_log/vanilla/last_checkpoint.pth.tar")
    b2 = ["--model_structure", "b2", "--ft_ckpt", ckpt, "--epochs", "1", "--lr", "0.01"]
    plain = run("b2", *b2)
    one_image = 100.0 / plain["num_images"]

    def close(a, b, what):
        for key in METRICS:
            tolerance = 0.1 if key == "PxAP" else one_image
            assert abs(a[key] - b[key]) <= tolerance, (what, a["method"], a["branch"], key)

    # Fine-tuning under bf16 autocast in channels-last lands close to float32.
    amp_trained = run("b2_amp", *b2, "--amp", "--channels_last")
    for a, b in zip(plain["rows"], amp_trained["rows"]):
        close(a, b, "trained with --amp")
    # The same checkpoint scored each way.
    scored = {flags: run("b2", "--eval_only", "--model_structure", "b2", *flags)
              for flags in [(), ("--channels_last",), ("--compile",), ("--amp",),
                            ("--decode_on_device",)]}
    reference = scored[()]
    assert reference["rows"] == plain["rows"]
    for flags in [("--channels_last",), ("--compile",)]:
        for a, b in zip(reference["rows"], scored[flags]["rows"]):
            for key in METRICS:
                # Float rounding moves a few pixels across PxAP's bins (1e-5 points);
                # the quantised box metrics do not move.
                tolerance = 0.01 if key == "PxAP" else 0.0
                assert abs(a[key] - b[key]) <= tolerance, (flags, a["method"], a["branch"], key)
    for flags in [("--amp",), ("--decode_on_device",)]:
        for a, b in zip(reference["rows"], scored[flags]["rows"]):
            close(a, b, flags)
    assert os.path.isfile(tmp_path / "train_log/b2_amp/last_checkpoint.pth.tar")

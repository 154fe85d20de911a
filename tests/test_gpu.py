"""The CUDA paths, against the CPU: run where a GPU is present (skipped
elsewhere).  They cover what the CPU tests can only stand in for: the
evaluator's pinned-memory copies and CUDA events, PxAP's device histograms,
`torch._assert_async`, bf16 autocast on CUDA, nvJPEG decoding and the
whole command line on a GPU."""
import numpy as np
import pytest
import torch

import config
import evaluation
import inference
import main
from data_loaders import LoaderSettings, get_data_loader
from tests.conftest import copy_as_dataset
from tests.test_acceleration import METRICS, _argv, _as_jpeg_dataset, dual_resnet18
from wsol.runtime.acceleration import Acceleration, autocast
from wsol.cams import compute_cams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda", 0)


def _metadata(root):
    metadata = evaluation.configure_metadata(str(root / "metadata/SYNTH/test"))
    return metadata, evaluation.get_image_ids(metadata)


def test_box_and_mask_evaluators_count_the_same_on_the_gpu(tiny_synth_root):
    metadata, ids = _metadata(tiny_synth_root)
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((len(ids), 64, 64)).astype(np.float32))
    maps[1] = float("nan")
    corrects = torch.from_numpy(rng.random(len(ids)) < 0.5)
    thresholds = evaluation.make_threshold_list(0.01)
    counts = []
    for device in ("cpu", CUDA):
        box = evaluation.BoxEvaluator(metadata, "SYNTH", "test", thresholds, resize_length=64)
        mask = evaluation.MaskEvaluator(metadata, "SYNTH", "test", thresholds,
                                        mask_root=str(tiny_synth_root / "dataset/SYNTH"),
                                        resize_length=64)
        # On the GPU the maps reach the box evaluator through the asynchronous hand-off.
        hand_off = inference.DeviceHandOff(box)
        for start in range(0, len(ids), 3):  # several batches in flight
            part = slice(start, start + 3)
            if device == "cpu":
                box.accumulate_batch(maps[part], ids[part], corrects[part], normalized=False)
            else:
                hand_off.add(maps[part].to(device), ids[part], corrects[part].to(device))
            mask.accumulate_batch(maps[part].to(device), ids[part], normalized=False)
        hand_off.finish()
        counts.append({**box.state(), **{f"mask_{k}": v for k, v in mask.state().items()}})
    for key, value in counts[0].items():
        np.testing.assert_array_equal(counts[1][key], value, err_msg=key)
    assert counts[1]["num_nan_maps"] == 1


def test_out_of_range_maps_are_reported_after_the_copy_lands(tiny_synth_root):
    metadata, ids = _metadata(tiny_synth_root)
    box = evaluation.BoxEvaluator(metadata, "SYNTH", "test", [0.5], resize_length=64)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        box.accumulate_batch(torch.full((2, 64, 64), 2.0, device=CUDA), ids[:2])
        box.state()


def test_cams_and_bf16_on_the_gpu_match_the_cpu():
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3])
    methods = ["cam", "gradcam", "gradcam++", "xgradcam", "layercam"]
    cpu_model, gpu_model = dual_resnet18(), dual_resnet18().to(CUDA)
    for branch in ("softmax", "sigmoid"):
        reference = compute_cams(cpu_model, x, y, methods, branch)
        exact = compute_cams(gpu_model, x.to(CUDA), y.to(CUDA), methods, branch)
        with autocast(CUDA, Acceleration(amp=True)):
            amp = compute_cams(gpu_model, x.to(CUDA), y.to(CUDA), methods, branch)
        for method in methods:
            ref = reference.maps[method]
            scale = ref.abs().amax((1, 2), keepdim=True).clamp_min(1e-12)
            assert ((exact.maps[method].cpu() - ref).abs() / scale).max() < 1e-3, method
            assert amp.maps[method].dtype == torch.float32
            assert ((amp.maps[method].cpu() - ref).abs() / scale).mean() < 0.05, method


def test_nvjpeg_decoding_matches_the_cpu_decoder(tiny_synth_root, tmp_path):
    images = _as_jpeg_dataset(tiny_synth_root, tmp_path / "jpeg")
    batches = []
    for device in (torch.device("cpu"), CUDA):
        loader = get_data_loader(
            {"train": str(images)}, str(tiny_synth_root / "metadata/SYNTH"),
            LoaderSettings(batch_size=4, workers=0, resize_size=72, crop_size=64,
                           decode_device=device),
            splits=("train",), generator=torch.Generator().manual_seed(3))["train"]
        batches.append([(x.cpu(), ids) for x, _, ids in loader])
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for (a, ids_a), (b, ids_b) in zip(*batches):
        assert ids_a == ids_b
        # nvJPEG and libjpeg may differ by a few grey levels on a pixel.
        assert ((a - b) * std).abs().mul(255).mean() < 1.0


def test_command_line_on_the_gpu(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    run = lambda *a: main.run(config.get_configs(_argv(tmp_path, *a)))  # noqa: E731
    run("vanilla", "--epochs", "2", "--lr", "0.05", "--cam_branch", "softmax", "--skip_eval",
        "--gpus", "0")
    ckpt = str(tmp_path / "train_log/vanilla/last_checkpoint.pth.tar")
    b2 = ["--model_structure", "b2", "--ft_ckpt", ckpt, "--epochs", "1", "--lr", "0.01"]
    on_gpu = run("b2", *b2, "--gpus", "0", "--amp", "--channels_last", "--decode_on_device",
                 "--fidelity", "--fidelity_steps", "2")
    cpu = run("b2", "--eval_only", "--model_structure", "b2", "--fidelity",
              "--fidelity_steps", "2")  # the GPU-trained checkpoint scored on the CPU
    one_image = 100.0 / cpu["num_images"]
    for a, b in zip(cpu["rows"], on_gpu["rows"]):
        for key in METRICS:
            tolerance = 0.1 if key == "PxAP" else one_image
            assert abs(a[key] - b[key]) <= tolerance, (a["method"], a["branch"], key)
        assert abs(a["Average Drop"] - b["Average Drop"]) < 5.0

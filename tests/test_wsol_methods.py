"""wsolevaluation's WSOL methods (Hide-and-Seek, CutMix) and the flags of the
public code's config.py files: masks against slow loops and statistics over
seeds, CutMix's loss against a hand computation, every public flag parsed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import config
import main
from tests.conftest import copy_as_dataset
from tests.test_faults import argv
from wsol.settings import read_run_settings
from wsol.wsol_methods import (CutMix, HideAndSeek, batch_augment, batch_rng, cutmix_box,
                               hide_and_seek_mask)


# -- Hide-and-Seek ------------------------------------------------------------------------
def slow_has(images: torch.Tensor, grid_size: int, drop_rate: float, rng) -> torch.Tensor:
    """wsolevaluation's loop: cells of grid_size pixels, rows then columns, one
    uniform draw each, hidden (zero) when the draw is <= drop_rate."""
    out = images.clone()
    b, _, h, w = images.shape
    for i in range(b):
        for top in range(0, h, grid_size):
            for left in range(0, w, grid_size):
                if rng.random() <= drop_rate:
                    out[i, :, top:top + grid_size, left:left + grid_size] = 0.0
    return out


@pytest.mark.parametrize("size,grid", [(32, 4), (30, 8), (10, 3)])
def test_hide_and_seek_equals_the_slow_loop_for_a_fixed_seed(size, grid):
    images = torch.randn(3, 3, size, size) + 5.0  # no pixel is zero before hiding
    has = HideAndSeek(grid, 0.5, seed=7, rank=1)
    mine = has(images, torch.zeros(3, dtype=torch.long), epoch=2, batch=5).images
    expected = slow_has(images, grid, 0.5, batch_rng(7, 1, 2, 5))
    assert torch.equal(mine, expected)
    # Another batch, epoch, rank or seed: other cells.
    other = has(images, torch.zeros(3, dtype=torch.long), epoch=2, batch=6).images
    assert not torch.equal(mine, other)


def test_hide_and_seek_statistics_over_seeds():
    grid, rate = 4, 0.3
    hidden, cells_constant = [], True
    for seed in range(200):
        keep = hide_and_seek_mask(32, 32, 2, grid, rate, np.random.default_rng(seed))
        cells = keep.reshape(2, 8, grid, 8, grid)
        cells_constant &= bool((cells == cells[:, :, :1, :, :1]).all())
        hidden.append(1.0 - keep.mean())
    assert cells_constant
    # 200 x 128 cells: the hidden share's standard error is ~0.003.
    assert abs(np.mean(hidden) - rate) < 0.012
    assert hide_and_seek_mask(8, 8, 1, 4, 0.0, np.random.default_rng(0)).all()
    assert not hide_and_seek_mask(8, 8, 1, 4, 1.0, np.random.default_rng(0)).any()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(HideAndSeek(0, 0.5)(x, torch.zeros(2), 1, 1).images, x)


# -- CutMix --------------------------------------------------------------------------------
def test_cutmix_box_label_and_ratio_for_a_fixed_seed():
    images = torch.arange(4 * 3 * 20 * 20, dtype=torch.float32).view(4, 3, 20, 20)
    labels = torch.tensor([0, 1, 2, 3])
    mix = CutMix(beta=1.0, prob=1.0, seed=3)(images, labels, epoch=1, batch=4)
    # By hand, from the same draws: the probability test, lam, the pairing, the centre.
    rng = batch_rng(3, 0, 1, 4)
    assert rng.random() < 1.0
    lam = rng.beta(1.0, 1.0)
    order = rng.permutation(4)
    cut = math.sqrt(1 - lam)
    ch, cw = int(20 * cut), int(20 * cut)
    cy, cx = rng.integers(20), rng.integers(20)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, 20)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, 20)
    expected = images.clone()
    expected[:, :, top:bottom, left:right] = images[order][:, :, top:bottom, left:right]
    assert torch.equal(mix.images, expected)
    assert torch.equal(mix.labels, labels) and torch.equal(mix.labels_b, labels[order])
    assert mix.lam == pytest.approx(1 - (bottom - top) * (right - left) / 400)


def test_cutmix_statistics_and_probability():
    lams = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        lam = rng.beta(1.0, 1.0)
        top, left, bottom, right = cutmix_box(224, 224, lam, rng)
        assert 0 <= top <= bottom <= 224 and 0 <= left <= right <= 224
        lams.append(1 - (bottom - top) * (right - left) / 224 ** 2)
    # Beta(1, 1) gives E[1 - cut area] = 0.5 before clipping; clipping at the
    # edges only shrinks the box, so the mean share left lies a little above 0.5.
    assert 0.5 < np.mean(lams) < 0.7
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    mixed = [CutMix(1.0, 0.25, seed=s)(x, y, 1, 1).labels_b is not None for s in range(400)]
    assert abs(np.mean(mixed) - 0.25) < 0.07
    assert CutMix(0.0, 1.0)(x, y, 1, 1).labels_b is None
    assert batch_augment("cam") is None


def test_cutmix_loss_is_the_two_label_sets_losses_mixed(tmp_path):
    """One training step's reported loss against lam * CE(a) + (1 - lam) * CE(b)
    computed by hand on the same mixed batch (lr 0: the weights do not move)."""
    from wsol.runtime.training import train_one_epoch
    from wsol.model import CAMModel
    torch.manual_seed(0)
    model = CAMModel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(),
                                         torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                         torch.nn.Linear(4, 5)), "1", "4", "custom")
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    loader = [(x, y, list(range(6)))]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cutmix = CutMix(1.0, 1.0, seed=11)
    stats, _ = train_one_epoch(model, loader, opt, torch.device("cpu"), epoch=1,
                               show_progress=False, augment=cutmix)
    mix = cutmix(x, y, 1, 1)
    model.train()
    logits = model(mix.images)["logits"]
    expected = mix.lam * F.cross_entropy(logits, y) + (1 - mix.lam) * F.cross_entropy(
        logits, mix.labels_b)
    assert mix.labels_b is not None and 0 < mix.lam < 1
    assert stats["loss"] == pytest.approx(float(expected.detach()), rel=1e-5)


# -- the flags of the public config.py files ----------------------------------------------
WSOLEVALUATION = """--seed 1 --experiment_name e --override_cache TRUE --workers 0
--dataset_name SYNTH --data_root d --metadata_root m --mask_root k --proxy_training_set FALSE
--num_val_sample_per_class 0 --architecture resnet50 --epochs 1 --pretrained FALSE
--cam_curve_interval 0.01 --resize_size 256 --crop_size 224 --multi_contour_eval TRUE
--multi_iou_eval TRUE --iou_threshold_list 30 50 70 --eval_checkpoint_type last
--box_v2_metric TRUE --batch_size 8 --lr 0.01 --lr_decay_frequency 3 --lr_classifier_ratio 10
--momentum 0.9 --weight_decay 1e-4 --large_feature_map FALSE --wsol_method has
--has_grid_size 8 --has_drop_rate 0.4 --acol_threshold 0.7 --spg_threshold_1h 0.7
--spg_threshold_1l 0.01 --spg_threshold_2h 0.5 --spg_threshold_2l 0.05 --spg_threshold_3h 0.7
--spg_threshold_3l 0.1 --adl_drop_rate 0.75 --adl_threshold 0.9 --cutmix_beta 1.0
--cutmix_prob 1.0"""
DUAL_CAM = """--gpus 0 --root r --wandb off --project p --last_layer fc --unfreeze_layer fc2
--model_structure b2 --init_weight True --debug --c1 cross_entropy --c2 binary_cross_entropy
--t2 --wandb_name n --ft_ckpt x.pth --method gradcam,finercam --loc_threshold 0.2
--alpha 0.6"""


def test_every_flag_of_the_public_config_files_parses_with_its_meaning():
    args, given = config.parse_main_args(WSOLEVALUATION.split())
    s = config.build_settings(args, given)
    assert (s.wsol.method, s.wsol.has_grid_size, s.wsol.has_drop_rate) == ("has", 8, 0.4)
    assert (s.evaluation.multi_contour_eval, s.evaluation.iou_threshold_list) == (True,
                                                                                  (30, 50, 70))
    assert "--acol_threshold applies to --wsol_method acol" in " ".join(s.notes)
    args, given = config.parse_main_args(DUAL_CAM.split())
    s = config.build_settings(args, given)
    assert s.runtime.debug and s.model.dual
    finer = [m for m in s.cams.instances() if m.name == "finercam"][0]
    assert finer.alpha == 0.6
    assert "--init_weight has no effect" in " ".join(s.notes)


def test_wsolevaluations_readme_command_parses_as_written():
    line = """--dataset_name OpenImages --architecture vgg16 --wsol_method cam
    --experiment_name OpenImages_vgg16_CAM --pretrained TRUE --num_val_sample_per_class 5
    --large_feature_map FALSE --batch_size 32 --epochs 10 --lr 0.00227913316
    --lr_decay_frequency 3 --weight_decay 5.00E-04 --override_cache FALSE --workers 4
    --box_v2_metric True --iou_threshold_list 30 50 70 --eval_checkpoint_type last"""
    args, given = config.parse_main_args(line.split())
    s = config.build_settings(args, given)
    assert (s.optim.lr, s.optim.weight_decay, s.optim.epochs) == (0.00227913316, 5e-4, 10)
    assert s.data.num_val_sample_per_class == 5 and s.model.pretrained
    assert s.evaluation.box_column == "MaxBoxAccV2" and s.wsol.method == "cam"
    # OpenImages is scored with PxAP: the IoU list, at its default, changes nothing (a note).
    assert "--iou_threshold_list does not apply to OpenImages" in " ".join(s.notes)


def test_box_v2_metric_false_scores_maxboxacc_v1():
    args, given = config.parse_main_args(["--box_v2_metric", "FALSE"])
    e = config.build_settings(args, given).evaluation
    assert (e.multi_contour_eval, e.iou_threshold_list, e.box_column) == (False, (50,),
                                                                         "MaxBoxAcc")
    args, given = config.parse_main_args(["--multi_iou_eval", "FALSE"])
    e = config.build_settings(args, given).evaluation
    assert (e.multi_contour_eval, e.iou_threshold_list) == (True, (50,))


@pytest.mark.parametrize("flags,message", [
    ("--train_only", "--train_only is --skip_eval here"),
    ("--wandb_dir /tmp/w", "set the WANDB_DIR environment variable"),
    ("--t1", "--t1 clamps the softmax branch's maps"),
    ("--last_layer conv", "--last_layer conv: Dual-CAM's convolutional head is not built"),
    ("--c1 binary_cross_entropy", "--c1 binary_cross_entropy --c2 binary_cross_entropy:"),
    ("--wsol_method acol --architecture resnet18", "its network exists for inception_v3, resnet50"),
    ("--wsol_method spg --dataset_name SYNTH_ML --architecture vgg16", "SYNTH_ML is multi-label"),
    ("--wsol_method cutmix --recam --dataset_name SYNTH_ML", "ReCAM's loss takes one label"),
    ("--box_v2_metric FALSE --multi_contour_eval TRUE", "contradicts --multi_contour_eval"),
    ("--multi_iou_eval FALSE --iou_threshold_list 30 50", "contradicts --iou_threshold_list"),
    ("--has_drop_rate 1.5", "--has_drop_rate is a probability"),
    ("--cutmix_prob -1", "--cutmix_prob is a probability"),
])
def test_public_flags_that_mean_something_else_are_one_line(flags, message, tmp_path, capsys):
    code = main.main([*flags.split(), "--root", str(tmp_path / "log"), "--experiment_name",
                      "x"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "log" / "x").exists()


# -- SYNTH end to end -----------------------------------------------------------------------
@pytest.fixture()
def workspace(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    return tmp_path


@pytest.mark.parametrize("method", ["has", "cutmix"])
def test_synth_end_to_end_vanilla_then_sigmoid_branch(method, workspace):
    run = main.run(config.get_configs(argv(workspace, method, "--epochs", "2",
                                           "--wsol_method", method, "--has_grid_size", "8")))
    assert {r["branch"] for r in run["rows"]} == {"softmax"}
    vanilla = workspace / "train_log" / method / "last_checkpoint.pth.tar"
    b2 = main.run(config.get_configs(argv(
        workspace, f"{method}_b2", "--epochs", "1", "--wsol_method", method,
        "--model_structure", "b2", "--ft_ckpt", str(vanilla), "--cam_branch",
        "softmax,sigmoid")))
    assert {r["branch"] for r in b2["rows"]} == {"softmax", "sigmoid"}
    log = (workspace / "train_log" / f"{method}_b2" / "log.log").read_text()
    assert f"--wsol_method {method}" in log
    recorded = read_run_settings(str(workspace / "train_log" / f"{method}_b2"))
    assert recorded.wsol.method == method


# -- the center baseline ------------------------------------------------------------------
def test_center_map_is_a_normalised_radial_gaussian():
    from wsol.baselines import center_gaussian
    m = center_gaussian(224)
    assert m.shape == (224, 224) and m.max() == 1.0 and m.min() == 0.0
    assert np.allclose(m, m.T) and np.allclose(m, m[::-1]) and np.allclose(m, m[:, ::-1])
    # By hand at one pixel: x = y = (0.5 + 10) / 224 * 2 - 1, sigma 1, min-max scaled
    # between the centre pixels' value and the corners'.
    c = (0.5 + 111) / 224 * 2 - 1
    e = (0.5 + 0) / 224 * 2 - 1
    v = (0.5 + 10) / 224 * 2 - 1
    g = lambda x, y: math.exp(-(x * x + y * y) / 2)  # noqa: E731
    assert m[10, 10] == pytest.approx((g(v, v) - g(e, e)) / (g(c, c) - g(e, e)), abs=1e-12)


def test_center_baseline_equals_the_same_maps_scored_from_files(workspace, tmp_path, capsys):
    import evaluation
    from wsol.baselines import center_gaussian
    common = ["--dataset_name", "SYNTH", "--split", "test", "--metadata_root",
              str(workspace / "metadata"), "--mask_root", str(workspace / "dataset"),
              "--cam_curve_interval", "0.01", "--bootstrap", "0"]
    out = tmp_path / "center.json"
    assert evaluation.main(["--method", "center", *common, "--output_json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the center baseline has no classifier" in printed
    import json
    center = json.loads(out.read_text())["rows"][0]
    maps = tmp_path / "maps"
    maps.mkdir()
    ids = [line.split(",")[0] for line in
           (workspace / "metadata" / "SYNTH" / "test" / "image_ids.txt").read_text().split()]
    for image_id in ids:
        path = maps / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, center_gaussian(224))
    files = tmp_path / "files.json"
    assert evaluation.main(["--scoremap_root", str(maps), *common,
                            "--output_json", str(files)]) == 0
    saved = json.loads(files.read_text())["rows"][0]
    for key in ("MaxBoxAccV2", "PxAP", "GT-known Loc"):
        assert center[key] == saved[key]
    assert center["Top-1 Loc"] is None and center["method"] == "center"
    assert evaluation.main(["--method", "center", "--dataset_name", "SYNTH_ML"]) == 2
    assert "seed mIoU needs a map per class" in capsys.readouterr().err

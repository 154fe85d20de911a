"""The published experiments: learning-rate groups and decay as the public code
has them, the paper's Grad-CAM networks, and the switch that replays the
public code (docs/reproducing.md)."""
from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import config
import main
from evaluation import make_threshold_list
from tests.conftest import copy_as_dataset
from wsol.architectures import build_cam_model
from wsol.cams import compute_cams, evaluation_maps
from wsol.runtime.training import OptimConfig, build_optimizer, build_scheduler

EPOCHS = (1, 3, 4, 6, 9, 10)
# With --lr_decay_frequency 3 the public code multiplies by 0.1 before epochs
# 3, 6 and 9 (1-based): the factor of each epoch above.
DECAY = {1: 1.0, 3: 0.1, 4: 0.1, 6: 0.01, 9: 0.001, 10: 0.001}
LR, RATIO = 0.003, 10.0

# For every network: which top-level modules train at lr x ratio ("x10") and
# which at lr ("x1"), as wsolevaluation's rule gives them (written out by hand
# from the rule, not from our code): VGG16 and InceptionV3 name their feature
# part (features.*; Mixed*, Conv2d_1..4*) and the rest gets x10; ResNet50 names
# its x10 part (layer4.*, fc.*), which the branch fc2 does not match.
EXPECTED = {
    "vgg16": {"vanilla": {"features": 1, "conv6": 10, "fc": 10}, "b2": {"fc2": 10}},
    "vgg16_gradcam": {"vanilla": {"features": 1, "classifier": 10},
                      "b2": {"classifier_2": 10}},
    "resnet50": {"vanilla": {"conv1": 1, "bn1": 1, "layer1": 1, "layer2": 1, "layer3": 1,
                             "layer4": 10, "fc": 10}, "b2": {"fc2": 1}},
    "inception_v3": {"vanilla": {"Conv2d_1a_3x3": 1, "Conv2d_2a_3x3": 1, "Conv2d_2b_3x3": 1,
                                 "Conv2d_3b_1x1": 1, "Conv2d_4a_3x3": 1, "Mixed_5b": 1,
                                 "Mixed_6e": 1, "SPG_A3_1b": 10, "SPG_A3_2b": 10,
                                 "SPG_A4": 10}, "b2": {"SPG_A4_2": 10}},
    "inception_v3_gradcam": {"vanilla": {"Conv2d_1a_3x3": 1, "Conv2d_4a_3x3": 1,
                                         "Mixed_5b": 1, "Mixed_7c": 1, "fc": 10},
                             "b2": {"fc2": 10}},
}


def _lr_by_parameter(network: str, structure: str) -> dict[int, dict[str, float]]:
    """The learning rate of every trainable parameter (public name) at each
    epoch, read from the optimizer while the scheduler steps as in training."""
    with torch.device("meta"):  # names and shapes only: no memory, no init cost
        model, spec = build_cam_model(network, 1000)
        if structure == "b2":
            model.add_sigmoid_branch("random")
            model.freeze_backbone(("fc2",))
    cfg = OptimConfig(lr=LR, lr_classifier_ratio=RATIO, lr_decay_frequency=3)
    optimizer = build_optimizer(model, cfg, spec.lr_rule)
    scheduler = build_scheduler(optimizer, cfg)
    names = {id(p): model.public_name(n) for n, p in model.named_parameters()}
    out = {}
    for epoch in range(1, 11):
        out[epoch] = {names[id(p)]: group["lr"] for group in optimizer.param_groups
                      for p in group["params"]}
        scheduler.step()  # after the epoch, as training does
    return out


@pytest.mark.parametrize("network", list(EXPECTED))
@pytest.mark.parametrize("structure", ["vanilla", "b2"])
def test_every_parameter_gets_the_public_codes_learning_rate(network, structure):
    lrs = _lr_by_parameter(network, structure)
    expected = EXPECTED[network][structure]
    trained = set(lrs[1])
    if structure == "b2":  # only the branch trains
        assert {n.split(".")[0] for n in trained} == set(expected)
    for prefix in expected:
        assert any(n.split(".")[0] == prefix for n in trained), prefix
    for epoch in EPOCHS:
        for name, lr in lrs[epoch].items():
            top = name.split(".")[0]
            if top not in expected:
                continue
            want = LR * expected[top] * DECAY[epoch]
            assert lr == pytest.approx(want, rel=1e-12), (name, epoch)


def test_decay_is_repeated_multiplication_as_in_the_public_code():
    lrs = _lr_by_parameter("vgg16", "b2")
    value = LR * RATIO
    for epoch in range(1, 11):
        if epoch % 3 == 0:
            value *= 0.1  # the public code: param_group["lr"] *= 0.1 before the epoch
        assert lrs[epoch]["fc2.weight"] == value  # bit for bit


# ---------------------------------------------------------------------------
# The paper's Grad-CAM networks
# ---------------------------------------------------------------------------
def test_gradcam_vgg16_is_torchvisions_vgg16_without_its_last_max_pool():
    import torchvision
    model, spec = build_cam_model("vgg16_gradcam", 1000)
    tv = torchvision.models.vgg16(weights=None)
    ours = model.model.state_dict()
    # The same parameter names and shapes: torchvision's ImageNet file loads as it is.
    assert {k: tuple(v.shape) for k, v in ours.items()} == \
        {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    x = torch.randn(1, 3, 224, 224)
    seen = {}
    model.feature_module.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        model.eval()(x)
    assert tuple(seen["a"].shape) == (1, 512, 14, 14)  # 14x14 maps at 224 px
    model.add_sigmoid_branch("clone")
    assert isinstance(model.fc2, nn.Sequential) and len(model.fc2) == 7  # a second MLP
    assert "classifier_2.0.weight" in {model.public_name(n) for n, _ in model.named_parameters()}


def test_gradcam_inception_is_torchvisions_with_mixed_7c_and_a_second_linear():
    model, spec = build_cam_model("inception_v3_gradcam", 10)
    assert spec.feature_layer == "Mixed_7c" and isinstance(model.head_module, nn.Linear)
    model.add_sigmoid_branch("random")
    assert isinstance(model.fc2, nn.Linear) and model.fc2.in_features == 2048
    # The public code's fc2 keeps torchvision Inception's initialisation:
    # truncated normal, std 0.1.
    assert 0.08 < model.fc2.weight.std().item() < 0.12


def test_public_code_branch_initialisations():
    torch.manual_seed(0)
    vgg, _ = build_cam_model("vgg16", 200)
    vgg.add_sigmoid_branch("random")
    assert abs(vgg.fc2.weight.std().item() - 0.01) < 0.001 and torch.all(vgg.fc2.bias == 0)
    inception, _ = build_cam_model("inception_v3", 200)
    inception.add_sigmoid_branch("random")
    w = inception.fc2.weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5  # xavier-uniform of a 1x1 conv
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(inception.fc2.bias == 0)


# ---------------------------------------------------------------------------
# --replay public_code
# ---------------------------------------------------------------------------
def test_replay_switch_sets_every_public_code_choice_and_explicit_flags_win():
    args = config.get_configs(["--replay", "public_code"])
    c = args.choices
    assert (c.sigmoid_init, c.frozen_mode, c.map_style, c.first_box_only,
            c.threshold_list, c.fidelity, c.seed) == (
        "random", "public_code", "public_code", True, "public_code", "public_code", 42)
    args = config.get_configs(["--replay", "public_code", "--seed", "3", "--sigmoid_init",
                               "clone"])
    c = args.choices
    assert c.seed == 3 and c.sigmoid_init == "clone" and c.frozen_mode == "public_code"
    ours = config.get_configs([])
    c = ours.choices
    assert (c.sigmoid_init, c.frozen_mode, c.map_style, c.first_box_only,
            c.seed) == ("clone", "eval", "wsolevaluation", False, 0)


def _first_bn_io(model, x):
    seen = {}
    bn = model.model.bn1
    # Copies: the ReLU after it works in place.
    handle = bn.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach().clone(),
                                                                  y=o.detach().clone()))
    out = model(x)
    handle.remove()
    return seen["x"], seen["y"], out


def test_replayed_fine_tuning_step_uses_batch_statistics_and_keeps_running_ones():
    torch.manual_seed(0)
    base, _ = build_cam_model("resnet18", 5)
    with torch.no_grad():  # running statistics that differ from any batch's
        for m in base.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for mode in ("public_code", "eval"):
        model = copy.deepcopy(base).add_sigmoid_branch("random")
        model.freeze_backbone(("fc2",), mode)
        buffers = {k: v.clone() for k, v in model.model.state_dict().items()
                   if "running" in k or "num_batches" in k}
        optimizer = build_optimizer(model, OptimConfig(lr=0.1))
        model.train()
        bn_in, bn_out, out = _first_bn_io(model, x)
        loss = nn.functional.binary_cross_entropy_with_logits(
            out["logits_sigmoid"], nn.functional.one_hot(y, 5).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bn = model.model.bn1
        if mode == "public_code":  # normalised with this batch's own statistics
            mean = bn_in.mean((0, 2, 3), keepdim=True)
            var = bn_in.var((0, 2, 3), unbiased=False, keepdim=True)
        else:                      # with the running statistics (eval mode)
            mean = bn.running_mean.view(1, -1, 1, 1)
            var = bn.running_var.view(1, -1, 1, 1)
        expected = (bn_in - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) \
            + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(bn_out, expected.detach(), rtol=1e-4, atol=1e-4)
        # Either way the running statistics (and their counter) are untouched.
        for key, value in buffers.items():
            assert torch.equal(model.model.state_dict()[key], value), (mode, key)


def test_replayed_fine_tuning_keeps_dropout_on_in_the_frozen_part():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for mode, differ in (("public_code", True), ("eval", False)):
        model, _ = build_cam_model("inception_v3", 4)
        model.add_sigmoid_branch("clone").freeze_backbone(("fc2",), mode)
        model.train()
        with torch.no_grad():
            a, b = model(x)["logits_sigmoid"], model(x)["logits_sigmoid"]
        assert (not torch.equal(a, b)) == differ, mode


def test_public_code_gradient_maps_are_relu_minmax_then_bilinear_as_opencv():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 7, 7, generator=g)
    ours = evaluation_maps({"gradcam": raw, "cam": raw}, (224, 224), normalize=False,
                           style="public_code")
    for b in range(3):
        cam = np.maximum(raw[b].numpy(), 0)
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
        expected = cv2.resize(cam.astype(np.float32), (224, 224))  # INTER_LINEAR
        np.testing.assert_allclose(ours["gradcam"][b].numpy(), expected, atol=1e-5)
    # cam keeps the raw map and bicubic resizing (its negative values too).
    assert ours["cam"].min() < 0
    default = evaluation_maps({"cam": raw}, (224, 224), normalize=False)
    torch.testing.assert_close(ours["cam"], default["cam"])


def test_public_code_threshold_list_is_rounded_and_ends_at_one():
    public = make_threshold_list(0.001, "public_code")
    ours = make_threshold_list(0.001)
    assert len(public) == 1001 and public[-1] == 1.0 and len(ours) == 1000
    assert public[285] == 0.285 and ours[285] != 0.285
    # The two lists put some thresholds on different integer levels.
    assert int(public[285] * 200) == 56 and int(ours[285] * 200) == 57


@pytest.fixture(scope="module")
def tiny_b2(tiny_synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    copy_as_dataset(tiny_synth_root, root, "SYNTH")
    common = ["--dataset_name", "SYNTH", "--architecture", "resnet18", "--data_root",
              str(root / "dataset"), "--metadata_root", str(root / "metadata"), "--root",
              str(root / "train_log"), "--resize_size", "40", "--crop_size", "32",
              "--batch_size", "8", "--workers", "0", "--cam_curve_interval", "0.01"]
    main.run(config.get_configs([*common, "--experiment_name", "v", "--epochs", "1",
                                 "--lr", "0.005", "--skip_eval"]))
    ckpt = str(root / "train_log" / "v" / "last_checkpoint.pth.tar")
    return root, common, ckpt


def test_replayed_run_records_its_choices_and_scores_table_1s_fidelity(tiny_b2):
    root, common, ckpt = tiny_b2
    argv = [*common, "--experiment_name", "r", "--epochs", "1", "--lr", "0.01", "--ft_ckpt",
            ckpt, "--replay", "public_code", "--method", "gradcam", "--fidelity"]
    results = main.run(config.get_configs(argv))
    folder = root / "train_log" / "r"
    recorded = json.loads((folder / "config.json").read_text())["choices"]
    assert recorded == results["choices"] == {
        "sigmoid_init": "random", "frozen_mode": "public_code", "map_style": "public_code",
        "first_box_only": True, "threshold_list": "public_code", "fidelity": "public_code",
        "seed": 42, "seed_resize": "image"}
    row = results["rows"][0]
    assert row["GT-known Loc"] == row["GT-known Loc (first box)"]
    # Table 1's fidelity by hand: softmax over the sigmoid branch's logits, the
    # softmax head's predicted class, maps of that class.
    args = config.get_configs([*argv, "--eval_only"])
    from wsol.runtime.build import build_model
    from wsol.runtime.checkpoint import load_into_cam_model
    model, _ = build_model(args)
    load_into_cam_model(model, str(folder / "last_checkpoint.pth.tar"))
    model.eval()
    from data_loaders import LoaderSettings, get_data_loader
    loader = get_data_loader({"test": str(root / "dataset" / "SYNTH")},
                             str(root / "metadata" / "SYNTH"),
                             LoaderSettings(batch_size=8, workers=0, resize_size=40,
                                            crop_size=32), splits=("test",))["test"]
    drops, increases = [], []
    for images, _, _ in loader:
        with torch.no_grad():
            out = model(images)
        predicted = out["logits"].argmax(1)
        cams = compute_cams(model, images, predicted, ["gradcam"], "sigmoid")
        maps = evaluation_maps(cams, (224, 224), style="public_code")["gradcam"]
        maps = nn.functional.interpolate(maps[:, None], size=(32, 32), mode="bilinear",
                                         align_corners=False)
        with torch.no_grad():
            masked = model(images * maps)["logits_sigmoid"]
        for i, k in enumerate(predicted.tolist()):
            y = out["logits_sigmoid"][i].double().softmax(0)[k].item()
            o = masked[i].double().softmax(0)[k].item()
            drops.append(max(0.0, y - o) / y)
            increases.append(o > y)
    assert row["Average Drop"] == pytest.approx(100 * np.mean(drops), rel=1e-6, abs=1e-9)
    assert row["Increase in Confidence"] == pytest.approx(100 * np.mean(increases))

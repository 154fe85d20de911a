"""The architectures, the dual-branch wrapper, the loss and checkpoints."""
import pickle

import pytest
import torch
import torch.nn as nn
import torchvision

from wsol.architectures import build_cam_model, get_spec
from wsol.runtime.checkpoint import (CheckpointError, export_state_dict, load_checkpoint_file,
                             load_into_cam_model, load_pretrained, save_checkpoint)
from wsol.dual_branch import class_balanced_bce
from wsol.runtime.training import OptimConfig, build_optimizer


def cam_model(name="resnet18", classes=5, dual=False, init="clone", lfm=False):
    torch.manual_seed(0)
    model, _ = build_cam_model(name, classes, lfm)
    if dual:
        model.add_sigmoid_branch(init)
        model.freeze_backbone()
    return model


def feature_shape(model, size):
    seen = {}
    handle = model.feature_module.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    handle.remove()
    return tuple(seen["a"].shape)


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048),
                                           ("vgg16", 1024), ("inception_v3", 1024)])
def test_cam_layers_have_the_published_resolution(name, channels):
    # 224 px input -> 14x14 maps; large_feature_map -> 28x28 (docs/method.md).
    assert feature_shape(cam_model(name), 224) == (1, channels, 14, 14)
    if name != "resnet18":
        return
    assert feature_shape(cam_model(name, lfm=True), 224) == (1, channels, 28, 28)


def test_parameter_names_follow_wsolevaluation():
    vgg = cam_model("vgg16").model.state_dict()
    assert {"features.28.weight", "conv6.weight", "fc.weight"} <= set(vgg)
    assert "features.30.weight" not in vgg
    inception = cam_model("inception_v3").model.state_dict()
    assert {"Mixed_6e.branch_pool.conv.weight", "SPG_A3_1b.0.weight", "SPG_A3_2b.0.weight",
            "SPG_A4.weight", "Mixed_6a.branch3x3.bn.running_mean"} <= set(inception)
    resnet = cam_model("resnet50").model.state_dict()
    assert {"layer4.0.downsample.0.weight", "fc.weight"} <= set(resnet)


@pytest.mark.parametrize("name", ["resnet18", "inception_v3", "mobilenet_v2", "regnet_y_400mf"])
def test_cloned_sigmoid_branch_starts_equal_to_the_softmax_head(name):
    model = cam_model(name, classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["logits"]
        model.add_sigmoid_branch("clone")
        out = model(x)
    assert out["logits"].shape == (2, 4)
    assert torch.allclose(out["logits"], before, atol=1e-6)
    assert torch.allclose(out["logits_sigmoid"], before, atol=1e-6)


def test_random_init_matches_the_public_code():
    model = cam_model(classes=50).add_sigmoid_branch("random")
    w = model.fc2.weight.detach()
    assert torch.all(model.fc2.bias == 0)
    assert abs(w.std().item() - 0.01) < 0.001
    assert not torch.equal(w, model.head_module.weight.detach())


def test_sigmoid_branch_reads_the_same_pooled_features():
    model = cam_model("resnet18", classes=3).add_sigmoid_branch("random").eval()
    x = torch.randn(2, 3, 48, 48)
    feats = {}
    model.feature_module.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    with torch.no_grad():
        out = model(x)
    pooled = feats["a"].mean((2, 3))
    expected = pooled @ model.fc2.weight.T + model.fc2.bias
    assert torch.allclose(out["logits_sigmoid"], expected, atol=1e-5)


def test_fine_tuning_changes_only_the_branch_and_keeps_bn_statistics():
    model = cam_model("resnet18", classes=3, dual=True)
    frozen = {k: v.clone() for k, v in model.model.state_dict().items()}
    branch = model.fc2.weight.detach().clone()
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=1e-4))
    model.train()
    assert not model.model.training and model.fc2.training
    for _ in range(3):
        out = model(torch.randn(4, 3, 32, 32))
        loss = class_balanced_bce(out["logits_sigmoid"], torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # includes BN running stats
    assert not torch.equal(model.fc2.weight.detach(), branch)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc2.weight", "fc2.bias"]


def test_unknown_unfreeze_layer_is_an_error():
    model = cam_model(classes=3).add_sigmoid_branch()
    with pytest.raises(ValueError, match="fc3"):
        model.freeze_backbone(("fc3",))


def test_class_balanced_bce_against_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    labels = torch.tensor([0, 2])
    c = 3
    total = 0.0
    for i in range(2):
        for k in range(c):
            p = torch.sigmoid(logits[i, k])
            if k == labels[i]:
                total += -(c - 1) * torch.log(p)
            else:
                total += -torch.log(1 - p)
    assert torch.allclose(class_balanced_bce(logits, labels), total / (2 * c), atol=1e-6)


def test_vanilla_optimizer_gives_the_classifier_part_a_larger_lr():
    # A network without a published rule: the head is the classifier part.
    model, _ = build_cam_model("mobilenet_v2", 3)
    opt = build_optimizer(model, OptimConfig(lr=0.01, lr_classifier_ratio=10))
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([0.01, 0.1])
    head_group = max(opt.param_groups, key=lambda g: g["lr"])
    assert {id(p) for p in head_group["params"]} == {id(p) for p in model.head_module.parameters()}


def test_checkpoint_round_trip_in_the_public_layout(tmp_path):
    model = cam_model(classes=3, dual=True)
    nn.init.normal_(model.fc2.weight)
    path = str(tmp_path / "last_checkpoint.pth.tar")
    save_checkpoint({"state_dict": export_state_dict(model), "architecture": "resnet18"}, path)
    keys = load_checkpoint_file(path)["state_dict"].keys()
    assert "fc.weight" in keys and "fc2.weight" in keys
    assert not any(k.startswith("model.") for k in keys)
    fresh = cam_model(classes=3, dual=True)
    torch.manual_seed(1)
    nn.init.normal_(fresh.fc2.weight)
    load_into_cam_model(fresh, path)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_wsolevaluation_vanilla_checkpoint_with_module_prefix(tmp_path):
    source = cam_model(classes=3)
    state = {"module." + k: v for k, v in source.model.state_dict().items()}
    path = str(tmp_path / "vanilla.pth.tar")
    torch.save({"state_dict": state, "epoch": 3}, path)
    target = cam_model(classes=3)
    nn.init.zeros_(target.head_module.weight)
    load_into_cam_model(target, path)
    assert torch.equal(target.head_module.weight, source.head_module.weight)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    path = str(tmp_path / "r18.pth")
    torch.save({"state_dict": cam_model(classes=3).model.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches: fc.weight"):
        load_into_cam_model(cam_model(classes=7), path)
    with pytest.raises(CheckpointError, match=r"missing keys: .*layer1.0.conv3"):
        load_into_cam_model(cam_model("resnet50", classes=3), path)


def test_vanilla_checkpoint_into_a_b2_model_is_refused_with_a_hint(tmp_path):
    path = str(tmp_path / "vanilla.pth")
    torch.save(cam_model(classes=3).model.state_dict(), path)
    with pytest.raises(CheckpointError, match="without the sigmoid branch"):
        load_into_cam_model(cam_model(classes=3, dual=True), path)


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    created = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(str(created))}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint_file(str(path))
    assert not created.exists()


def test_missing_checkpoint_fails_at_once(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_file(str(tmp_path / "nope.pth"))


def test_torchvision_imagenet_weights_initialise_the_backbone(tmp_path):
    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None)
    path = str(tmp_path / "resnet18-imagenet.pth")
    torch.save(tv.state_dict(), path)
    model = cam_model("resnet18", classes=5)
    load_pretrained(model, get_spec("resnet18"), path)
    assert torch.equal(model.model.layer4[0].conv1.weight, tv.layer4[0].conv1.weight)
    assert model.head_module.weight.shape == (5, 512)  # head keeps its own init


def test_torchvision_vgg_weights_align_with_large_feature_map(tmp_path):
    torch.manual_seed(4)
    tv = torchvision.models.vgg16(weights=None)
    path = str(tmp_path / "vgg16.pth")
    torch.save(tv.state_dict(), path)
    model = cam_model("vgg16", classes=5, lfm=True)
    load_pretrained(model, get_spec("vgg16"), path)
    # torchvision's conv at index 24 follows the removed max-pool: index 23 here.
    assert torch.equal(model.model.features[23].weight, tv.features[24].weight)
    assert torch.equal(model.model.features[27].weight, tv.features[28].weight)

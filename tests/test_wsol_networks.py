"""wsolevaluation's ACoL, SPG and ADL networks (wsol.wsol_networks): each
layer, erasing, mask and loss against a hand computation or a slow loop,
ImageNet weights mapped onto every network, the maps through CAMModel on
either branch, and SYNTH end to end for each method, vanilla then b2."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

import config
import main
from tests.conftest import copy_as_dataset
from tests.test_faults import argv
from wsol.architectures import (ARCHITECTURES, WSOL_NETWORKS, build_cam_model,
                                recognise_network, wsol_network)
from wsol.cams import compute_cams
from wsol.dual_branch import training_loss
from wsol.wsol_methods import method_loss
from wsol.wsol_networks import ADL, VggAcol, spg_loss, spg_mask

THRESHOLDS = ((0.7, 0.01), (0.5, 0.05), (0.7, 0.1))


# -- ADL ----------------------------------------------------------------------------------
def slow_adl(x: torch.Tensor, drop: bool, threshold: float) -> torch.Tensor:
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        attention = x[i].mean(0)
        if drop:
            peak = max(float(v) for v in attention.flatten())
            mask = torch.tensor([[1.0 if float(v) < peak * threshold else 0.0 for v in row]
                                 for row in attention])
        else:
            mask = torch.tensor([[1.0 / (1.0 + math.exp(-float(v))) for v in row]
                                 for row in attention])
        out[i] = x[i] * mask
    return out


def test_adl_is_identity_in_eval_and_its_two_maps_in_training():
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    layer = ADL(drop_rate=1.0, threshold=0.8)
    assert layer.eval()(x) is x
    layer.train()
    torch.testing.assert_close(layer(x), slow_adl(x, True, 0.8), rtol=0, atol=1e-6)
    layer.drop_rate = 0.0
    torch.testing.assert_close(layer(x), slow_adl(x, False, 0.8), rtol=0, atol=1e-6)


def test_adl_drops_with_its_rate_once_per_batch():
    torch.manual_seed(0)
    layer = ADL(drop_rate=0.75, threshold=0.9).train()
    x = torch.randn(2, 3, 4, 4)
    drop = slow_adl(x, True, 0.9)
    drops = sum(torch.equal(layer(x), drop) for _ in range(2000))
    assert abs(drops / 2000 - 0.75) < 0.035  # 4.5 standard deviations
    with pytest.raises(ValueError, match="drop rate must lie in"):
        ADL(drop_rate=1.5)


# -- ACoL ---------------------------------------------------------------------------------
def _norm(values: torch.Tensor) -> torch.Tensor:
    low, high = float(values.detach().min()), float(values.detach().max())
    return (values - low) / (high - low)


def test_acol_erases_where_the_labels_map_reaches_the_threshold():
    torch.manual_seed(0)
    net = VggAcol(4, acol_threshold=0.6).eval()
    x, labels = torch.randn(3, 3, 32, 32), torch.tensor([2, 0, 3])
    out = net(x, labels)
    feature = net.backbone(x)
    expected_b = []
    for i in range(3):
        attention = _norm(net.classifier_A(feature[i:i + 1])[0, labels[i]])
        keep = (attention < 0.6).float()
        assert 0 < keep.sum() < keep.numel()  # something erased, something kept
        expected_b.append(net.classifier_B(feature[i:i + 1] * keep))
    torch.testing.assert_close(out["feat_map_b"], torch.cat(expected_b), rtol=0, atol=1e-5)
    for i in range(3):
        hand = torch.maximum(_norm(out["feat_map_a"][i, labels[i]]),
                             _norm(out["feat_map_b"][i, labels[i]]))
        torch.testing.assert_close(out["class_maps"][i], hand, rtol=0, atol=1e-6)
    # Without labels: classifier A's top-1 class.
    top = net(x)["class_map_labels"]
    assert torch.equal(top, out["logits"].argmax(1))


def test_acol_loss_is_both_classifiers_cross_entropy():
    torch.manual_seed(1)
    logits, logit_b, labels = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 4, 2, 2])
    outputs = {"logits": logits, "logits_sigmoid": None, "aux": {"logit_b": logit_b}}
    hand = sum(-torch.log_softmax(t, 1)[torch.arange(4), labels].mean() for t in (logits, logit_b))
    torch.testing.assert_close(training_loss(outputs, labels, False, method_loss("acol")), hand)


# -- SPG ----------------------------------------------------------------------------------
def slow_spg_mask(attention: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """wsolevaluation's loop, image by image."""
    mask = torch.full_like(attention, 255.0)
    for b in range(attention.shape[0]):
        fg = attention[b] > high
        if int(fg.sum()) < 30:
            fg = attention[b] > float(attention[b].max()) * 0.7
        mask[b][fg] = 1.0
    mask[attention < low] = 0.0
    return mask


def test_spg_mask_equals_the_per_image_loop():
    g = torch.Generator().manual_seed(0)
    attention = torch.rand(3, 1, 224, 224, generator=g)
    attention[1] *= 0.5            # nothing above 0.7: the 0.7 * max rule
    attention[2, :, :5, :5] += 1   # 25 pixels above 0.7 only
    attention[2].clamp_(max=0.69).__setitem__((slice(None), slice(0, 5), slice(0, 5)), 0.9)
    for high, low in THRESHOLDS:
        assert torch.equal(spg_mask(attention, high, low), slow_spg_mask(attention, high, low))


def _hand_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(logits, size=(224, 224), mode="bilinear", align_corners=False)
    keep = mask < 255
    x, y = up[keep].double(), mask[keep].double()
    p = 1 / (1 + torch.exp(-x))
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def test_spg_loss_is_cross_entropy_plus_three_masked_bces():
    g = torch.Generator().manual_seed(2)
    aux = {k: torch.randn(2, 1, 7, 7, generator=g) for k in ("logits_b1", "logits_b2", "logits_c")}
    aux["attention"] = torch.rand(2, 1, 224, 224, generator=g)
    aux["fused_attention"] = torch.rand(2, 1, 224, 224, generator=g)
    logits, labels = torch.randn(2, 3, generator=g), torch.tensor([1, 2])
    b2 = torch.sigmoid(F.interpolate(aux["logits_b2"], size=(224, 224), mode="bilinear",
                                     align_corners=False))
    hand = (-torch.log_softmax(logits.double(), 1)[torch.arange(2), labels].mean()
            + _hand_bce(aux["logits_b2"], slow_spg_mask(aux["attention"], 0.7, 0.01))
            + _hand_bce(aux["logits_b1"], slow_spg_mask(b2, 0.5, 0.05))
            + _hand_bce(aux["logits_c"], slow_spg_mask(aux["fused_attention"], 0.7, 0.1)))
    loss = spg_loss({"logits": logits, "aux": aux}, labels, THRESHOLDS)
    assert abs(float(loss) - float(hand)) < 1e-5


# -- networks, weights and names -----------------------------------------------------------
@pytest.mark.parametrize("network", sorted(n for n in WSOL_NETWORKS.values()))
def test_imagenet_weights_land_on_every_network(network):
    """torchvision's names mapped as wsolevaluation maps them: nothing
    unexpected, nothing missing but the method's new layers and the head, and
    a block after an ADL layer or a renamed SPG stage gets its own weights."""
    spec = ARCHITECTURES[network]
    backbone = network.rsplit("_", 1)[0]
    torch.manual_seed(0)
    if backbone == "vgg16":
        tv = torchvision.models.vgg16(weights=None).features
        state = {f"features.{k}": v for k, v in tv.state_dict().items()}
        state["classifier.6.weight"] = torch.zeros(3, 4)  # dropped by the map
    elif backbone == "resnet50":
        state = torchvision.models.resnet50(weights=None, num_classes=7).state_dict()
    else:
        state = torchvision.models.inception_v3(weights=None, num_classes=7, aux_logits=True,
                                                init_weights=False).state_dict()
    model, _ = build_cam_model(network, 7)
    mapped = spec.pretrained_keys(state, model.model) if spec.pretrained_keys else state
    missing, unexpected = model.model.load_state_dict(mapped, strict=False)
    assert unexpected == []
    assert all(k.startswith((model.head_name + ".", *spec.fresh_layers)) for k in missing), \
        [k for k in missing if not k.startswith((model.head_name + ".", *spec.fresh_layers))]
    own = model.model.state_dict()
    moved = {"resnet50_adl": ("layer3.1.conv1.weight", "layer3.2.conv1.weight"),
             "resnet50_spg": ("layer3.3.conv1.weight", "SPG_A2.2.conv1.weight"),
             "vgg16_spg": ("features.17.weight", "SPG_A_1.0.weight"),
             "vgg16_adl": ("features.28.weight", "features.30.weight")}.get(network)
    if moved:
        assert torch.equal(own[moved[1]], state[moved[0]])


def test_the_method_picks_the_network_and_checkpoints_name_it():
    assert wsol_network("vgg16", "acol") == "vgg16_acol"
    assert wsol_network("vgg16_gradcam", "spg") == "vgg16_spg"
    assert wsol_network("resnet50", "cutmix") == "resnet50"
    with pytest.raises(ValueError, match="exists for inception_v3, resnet50, vgg16"):
        wsol_network("resnet18", "adl")
    for network in ("vgg16_acol", "resnet50_spg", "inception_v3_spg", "inception_v3_acol"):
        model, _ = build_cam_model(network, 3)
        backbone = network.rsplit("_", 1)[0]
        found, reason = recognise_network(backbone, model.model.state_dict())
        assert found == network and network in reason
    model, _ = build_cam_model("inception_v3", 3)
    assert recognise_network("inception_v3", model.model.state_dict()) == ("inception_v3", "")


def test_maps_of_both_branches_through_cammodel():
    """Softmax branch: ACoL's own map of the explained classes; sigmoid branch:
    the clamped branch weights on classifier A's last features."""
    torch.manual_seed(0)
    model, _ = build_cam_model("vgg16_acol", 4, options={"acol_threshold": 0.5})
    model.add_sigmoid_branch()
    with torch.no_grad():
        model.fc2.weight.normal_()
    model.eval()
    x, targets = torch.randn(2, 3, 32, 32), torch.tensor([3, 1])
    soft = compute_cams(model, x, targets, ["cam"], branch="softmax").maps["cam"]
    sig = compute_cams(model, x, targets, ["cam"], branch="sigmoid").maps["cam"]
    net = model.model
    with torch.no_grad():
        out = net(x, targets)
        features = net.classifier_A[:4](net.backbone(x))
    for i in range(2):
        t = int(targets[i])
        hand = torch.maximum(_norm(out["feat_map_a"][i, t]), _norm(out["feat_map_b"][i, t]))
        torch.testing.assert_close(soft[i], hand, rtol=0, atol=1e-6)
        w = model.fc2.weight[t, :, 0, 0].clamp_min(0)
        torch.testing.assert_close(sig[i], torch.einsum("k,khw->hw", w, features[i]),
                                   rtol=1e-5, atol=1e-5)


# -- flags and SYNTH end to end -------------------------------------------------------------
@pytest.fixture()
def workspace(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    return tmp_path


def test_a_method_without_a_network_on_the_backbone_is_one_line(workspace, capsys):
    assert main.main(argv(workspace, "x", "--wsol_method", "acol")) == 2
    err = capsys.readouterr().err
    assert "--wsol_method acol: its network exists for inception_v3, resnet50, vgg16" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("method", ["acol", "spg", "adl"])
def test_synth_end_to_end_vanilla_then_sigmoid_branch(method, workspace):
    run = main.run(config.get_configs(argv(workspace, method, "--epochs", "1", "--architecture",
                                           "vgg16", "--wsol_method", method)))
    assert run["architecture"] == f"vgg16_{method}" and run["wsol_method"] == method
    vanilla = workspace / "train_log" / method / "last_checkpoint.pth.tar"
    b2 = main.run(config.get_configs(argv(
        workspace, f"{method}_b2", "--epochs", "1", "--architecture", "vgg16", "--wsol_method",
        method, "--model_structure", "b2", "--ft_ckpt", str(vanilla), "--cam_branch",
        "softmax,sigmoid")))
    rows = {r["branch"]: r for r in b2["rows"]}
    assert set(rows) == {"softmax", "sigmoid"}
    # The softmax branch is the vanilla model's: the same numbers.
    first = {r["branch"]: r for r in run["rows"]}["softmax"]
    assert rows["softmax"]["MaxBoxAccV2"] == first["MaxBoxAccV2"]
    assert all(0 <= rows[b]["MaxBoxAccV2"] <= 100 for b in rows)


def test_a_wsolevaluation_acol_checkpoint_is_recognised_by_its_keys(workspace, capsys):
    """wsolevaluation records only the backbone's name."""
    torch.manual_seed(0)
    model, _ = build_cam_model("vgg16_acol", 10)
    folder = workspace / "train_log" / "public_acol"
    folder.mkdir(parents=True)
    torch.save({"architecture": "vgg16", "epoch": 1, "state_dict": model.model.state_dict()},
               folder / "last_checkpoint.pth.tar")
    run = main.run(config.get_configs(argv(workspace, "public_acol", "--architecture", "vgg16",
                                           "--eval_only", "--eval_checkpoint_type", "last")))
    assert run["architecture"] == "vgg16_acol" and run["wsol_method"] == "acol"
    assert "its weights are those of vgg16_acol" in capsys.readouterr().err

"""Any classifier: heads of any shape, CAM layers of any layout, model outputs
of any kind, and a model check that refuses what would give a wrong map."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torchvision

import config
import main
from tests.conftest import copy_as_dataset
from wsol.architectures import build_cam_model
from wsol.cams import ModelCheckError, compute_cams, verify_cam_model
from wsol.model import CAMModel
from wsol.runtime.training import OptimConfig, build_optimizer

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]
timm = pytest.importorskip("timm")


def images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# b2 on every family trains the branch alone
# ---------------------------------------------------------------------------
FAMILIES = [("vgg16_gradcam", 32), ("inception_v3_gradcam", 96), ("vit", 32),
            ("vit_b_16", 32), ("swin_t", 64), ("convnext_tiny", 32), ("efficientnet_b0", 32),
            ("timm:resnet18", 32)]


@pytest.mark.parametrize("name,size", FAMILIES)
def test_b2_on_every_family_trains_only_the_branch(name, size):
    torch.manual_seed(0)
    model, spec = build_cam_model(name, 5, input_size=size)
    model.add_sigmoid_branch("clone").freeze_backbone(("fc2",))
    frozen = {k: v.clone() for k, v in model.model.state_dict().items()}
    branch = {k: v.clone() for k, v in model.fc2.state_dict().items()}
    optimizer = build_optimizer(model, OptimConfig(lr=0.1), spec.lr_rule)
    model.train()
    out = model(images(4, size))
    assert out["logits"].shape == out["logits_sigmoid"].shape == (4, 5)
    loss = nn.functional.binary_cross_entropy_with_logits(
        out["logits_sigmoid"], nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 5).float())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # bit-identical, BN statistics included
    assert any(not torch.equal(v, branch[k]) for k, v in model.fc2.state_dict().items())
    model.eval()
    methods = ["cam", "gradcam"] if name in ("timm:resnet18", "efficientnet_b0") else ["gradcam"]
    maps = compute_cams(model, images(2, size), methods=methods, branch="sigmoid").maps
    assert all(torch.isfinite(m).all() for m in maps.values())


# ---------------------------------------------------------------------------
# Token layers: maps equal an independent computation with the token reshape
# ---------------------------------------------------------------------------
def small_vit(classes=4):
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=16, mlp_dim=32,
                                               num_classes=classes)


def reference_maps(model, layer, x, targets, branch_head, clamp, prefix=1, grid=(4, 4)):
    """Maps by the textbook route: a hook keeps the layer's output, autograd
    differentiates the target logit of the branch, tokens are reshaped here."""
    kept = {}
    handle = layer.register_forward_hook(lambda m, i, o: kept.update(a=o) or o.retain_grad())
    logits = branch_head(x)
    handle.remove()
    logits.gather(1, targets[:, None]).sum().backward()
    a, g = kept["a"], kept["a"].grad

    def to_map(t):
        return t[:, prefix:].reshape(t.shape[0], *grid, t.shape[2]).permute(0, 3, 1, 2)

    a, g = to_map(a.detach()), to_map(g)
    relu = torch.relu
    weights = {"gradcam": g.mean((2, 3)),
               "xgradcam": (g * a).sum((2, 3)) / a.sum((2, 3))}
    alpha = g ** 2 / (2 * g ** 2 + a.sum((2, 3), keepdim=True) * g ** 3)
    alpha = torch.where(torch.isfinite(alpha), alpha, torch.zeros_like(alpha))
    weights["gradcam++"] = (alpha * relu(g)).sum((2, 3))
    out = {}
    for name, w in weights.items():
        w = w.clamp_min(0) if clamp else w
        out[name] = (w[:, :, None, None] * a).sum(1)
    out["layercam"] = (relu(g) * a).sum(1)
    out["hirescam"] = ((g.clamp_min(0) if clamp else g) * a).sum(1)
    return out


@pytest.mark.parametrize("branch", ["softmax", "sigmoid"])
def test_gradient_maps_on_a_class_token_model_equal_an_independent_computation(branch):
    vit = small_vit().double()
    model = CAMModel(vit, "encoder.layers.encoder_layer_1.ln_1", "heads.head").double()
    model.add_sigmoid_branch("random")
    with torch.no_grad():  # weights of both signs, so the clamp has work to do
        model.fc2.weight.copy_(torch.randn_like(model.fc2.weight))
    model.eval()
    x = images(3, 32).double()
    targets = torch.tensor([0, 3, 1])
    out = compute_cams(model, x, targets, GRADIENT_METHODS, branch)
    reference = copy.deepcopy(model)

    def head(inp):
        result = reference(inp)
        return result["logits"] if branch == "softmax" else result["logits_sigmoid"]

    layer = reference.model.encoder.layers.encoder_layer_1.ln_1
    expected = reference_maps(reference, layer, x, targets, head, clamp=branch == "sigmoid")
    for method in GRADIENT_METHODS:
        assert out.maps[method].shape == (3, 4, 4)
        torch.testing.assert_close(out.maps[method].double(), expected[method], rtol=1e-6,
                                   atol=1e-9)


def test_one_forward_and_one_backward_for_every_gradient_method_on_a_vit():
    model = CAMModel(small_vit(), "encoder.layers.encoder_layer_1.ln_1", "heads.head")
    model.add_sigmoid_branch().eval()
    x = images(2, 32)
    verify_cam_model(model, x, GRADIENT_METHODS, ["softmax", "sigmoid"])  # once per model
    forwards, backwards = [], []
    model.model.register_forward_hook(lambda *a: forwards.append(1))
    model.model.encoder.layers.encoder_layer_1.self_attention.register_full_backward_hook(
        lambda *a: backwards.append("head"))  # after the CAM layer
    model.model.encoder.layers.encoder_layer_0.register_full_backward_hook(
        lambda *a: backwards.append("backbone"))  # before it
    from wsol.cams import compute_cams_per_branch
    compute_cams_per_branch(model, x, None, GRADIENT_METHODS, ["softmax", "sigmoid"])
    # One forward; one backward per branch, through the head only.
    assert len(forwards) == 1 and backwards == ["head", "head"]


def test_channels_last_layer_gives_maps_over_the_spatial_axes():
    torch.manual_seed(0)
    swin = torchvision.models.swin_t(num_classes=3).double().eval()
    model = CAMModel(swin, "norm", "head").double().eval()  # [B, h, w, C]
    x = images(2, 64).double()
    targets = torch.tensor([0, 2])
    out = compute_cams(model, x, targets, ["cam", "gradcam", "layercam"], "softmax")
    kept = {}
    handle = swin.norm.register_forward_hook(lambda m, i, o: kept.update(a=o) or o.retain_grad())
    swin(x).gather(1, targets[:, None]).sum().backward()
    handle.remove()
    a = kept["a"].detach().permute(0, 3, 1, 2)  # the layer is channels-last
    g = kept["a"].grad.permute(0, 3, 1, 2)
    assert out.maps["gradcam"].shape == (2, 2, 2)
    torch.testing.assert_close(out.maps["gradcam"].double(),
                               (g.mean((2, 3))[:, :, None, None] * a).sum(1))
    torch.testing.assert_close(out.maps["layercam"].double(), (torch.relu(g) * a).sum(1))
    w = swin.head.weight[targets].detach()
    torch.testing.assert_close(out.maps["cam"].double(), (w[:, :, None, None] * a).sum(1))


# ---------------------------------------------------------------------------
# cam: exact (the sum identity) or refused
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,size", [("resnet18", 32), ("inception_v3", 64), ("vgg16", 32),
                                       ("swin_t", 64), ("efficientnet_b0", 32),
                                       ("mobilenet_v2", 32), ("timm:resnet18", 32)])
def test_cam_adds_up_to_the_logit_wherever_it_is_offered(name, size):
    model, _ = build_cam_model(name, 6, input_size=size)
    model.add_sigmoid_branch("random").eval()
    x = images(2, size)
    for branch in ("softmax", "sigmoid"):
        out = compute_cams(model, x, torch.tensor([1, 4]), ["cam"], branch, clamp=False)
        _, bias = model.class_weights(branch)
        logits = out.logits if branch == "softmax" else out.logits_sigmoid
        # mean-pooled CAM + bias = logit, for every image
        torch.testing.assert_close(out.maps["cam"].mean((1, 2)) + bias[[1, 4]],
                                   logits[[0, 1], [1, 4]], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,size,layer,head,message", [
    ("vit", 32, None, None, "cam is not defined for the CAM layer 'features.blocks.11.norm1'"),
    ("vit_b_16", 32, "conv_proj", None, "cam is not defined for the CAM layer 'conv_proj'"),
    ("convnext_tiny", 32, None, "classifier.2", "cam is not defined for the CAM layer "
                                               "'features'"),
    ("convnext_tiny", 32, None, None, "it contains LayerNorm2d"),
    ("vgg16_gradcam", 32, None, None, "it contains ReLU"),
    ("efficientnet_b0", 32, "features.7", None, "reads 1280 features but the CAM layer "
                                               "'features.7' has 320 channels"),
])
def test_cam_where_it_is_not_defined_is_refused_with_one_sentence(name, size, layer, head,
                                                                   message):
    model, _ = build_cam_model(name, 5, input_size=size, feature_layer=layer, head=head)
    model.eval()
    with pytest.raises(ModelCheckError, match="^.*" + message.replace("(", r"\(")) as error:
        compute_cams(model, images(2, size), methods=["cam"])
    assert "\n" not in str(error.value)
    compute_cams(model, images(2, size), methods=["gradcam"])  # gradient methods still work


def test_a_layer_after_which_the_head_pools_something_else_names_the_right_layer():
    model, _ = build_cam_model("resnet18", 5, feature_layer="layer4.0")
    with pytest.raises(ModelCheckError, match="pass the layer whose output it pools: 'layer4'"):
        compute_cams(model.eval(), images(2, 32), methods=["cam"])


def test_vit_final_tokens_do_not_reach_the_patches_and_the_error_says_so():
    model = CAMModel(small_vit(), "encoder", "heads.head").eval()  # [B, 1 + 16, 16] tokens
    with pytest.raises(ModelCheckError, match="does not reach the map of the CAM layer "
                                              "'encoder'.*last block's first norm"):
        compute_cams(model, images(2, 32), methods=["gradcam"])


class SharedActivation(nn.Module):
    """One SiLU module used twice per forward (as some EfficientNet code does)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
        self.act = nn.SiLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.act(self.block(x))
        return self.fc(x.mean((2, 3)))


def test_a_layer_that_runs_twice_is_refused_with_the_module_to_hook_instead():
    model = CAMModel(SharedActivation(), "act", "fc").eval()
    with pytest.raises(ModelCheckError, match="'act' runs 2 times in one forward.*hook a "
                                              "module that runs once, e.g. 'fc'"):
        compute_cams(model, images(2, 16), methods=["gradcam"])


class DictModel(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        a = self.body(x)
        logits = self.fc(a.mean((2, 3)))
        if self.kind == "dict":
            return {"logits": logits, "features": a}
        if self.kind == "tuple":
            return logits, a
        return type("Output", (), {"logits": logits})()


@pytest.mark.parametrize("kind", ["dict", "tuple", "object"])
def test_models_returning_dicts_tuples_or_objects_need_no_wrapper(kind):
    torch.manual_seed(0)
    model = CAMModel(DictModel(kind), "body", "fc").add_sigmoid_branch("clone").eval()
    x = images(2, 8)
    out = compute_cams(model, x, methods=["cam", "gradcam"], branch="sigmoid")
    torch.testing.assert_close(out.logits, out.logits_sigmoid)  # clone: same head
    assert out.maps["cam"].shape == (2, 8, 8)


def test_a_dict_without_a_logits_key_asks_which_one():
    class Two(DictModel):
        def forward(self, x):
            a = self.body(x)
            return {"scores": self.fc(a.mean((2, 3))), "features": a}

    model = CAMModel(Two("dict"), "body", "fc").eval()
    with pytest.raises(ValueError, match="say which holds the logits"):
        model(images(1, 8))
    model = CAMModel(Two("dict"), "body", "fc", output="scores").eval()
    assert model(images(1, 8))["logits"].shape == (1, 4)


def test_a_model_that_mixes_classes_after_the_head_is_refused_for_the_branch():
    class Centred(DictModel):
        def forward(self, x):
            logits = self.fc(self.body(x).mean((2, 3)))
            return logits - logits.mean(1, keepdim=True)  # couples every class

    model = CAMModel(Centred("x"), "body", "fc").add_sigmoid_branch("random").eval()
    with pytest.raises(ModelCheckError, match="changes the output of its head 'fc' across "
                                              "classes"):
        compute_cams(model, images(2, 8), methods=["gradcam"], branch="sigmoid")


def test_token_grid_can_be_given():
    model = CAMModel(small_vit(), "encoder.layers.encoder_layer_1.ln_1", "heads.head",
                     grid=(4, 4), num_prefix_tokens=1).eval()
    assert compute_cams(model, images(1, 32), methods=["gradcam"]).maps["gradcam"].shape == \
        (1, 4, 4)
    wrong = CAMModel(small_vit(), "encoder.layers.encoder_layer_1.ln_1", "heads.head",
                     grid=(3, 3), num_prefix_tokens=1).eval()
    with pytest.raises(ValueError, match="17 tokens, which is not 1 leading tokens plus a 3x3"):
        compute_cams(wrong, images(1, 32), methods=["gradcam"])


# ---------------------------------------------------------------------------
# From the command line
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_two_epoch_synth_run_with_deit_tiny_from_the_command_line(tiny_synth_root, tmp_path,
                                                                  capsys):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    common = ["--dataset_name", "SYNTH", "--architecture", "vit", "--data_root",
              str(tmp_path / "dataset"), "--metadata_root", str(tmp_path / "metadata"),
              "--root", str(tmp_path / "train_log"), "--resize_size", "40", "--crop_size",
              "32", "--batch_size", "8", "--workers", "0", "--cam_curve_interval", "0.01",
              "--method", "gradcam,layercam", "--epochs", "2"]
    assert main.main([*common, "--experiment_name", "v", "--lr", "0.001", "--skip_eval"]) == 0
    ckpt = tmp_path / "train_log" / "v" / "last_checkpoint.pth.tar"
    assert main.main([*common, "--experiment_name", "b", "--lr", "0.01", "--ft_ckpt",
                      str(ckpt), "--cam_branch", "softmax,sigmoid"]) == 0
    table = capsys.readouterr().out
    assert "gradcam   sigmoid" in table and "layercam  softmax" in table
    saved = torch.load(tmp_path / "train_log" / "b" / "last_checkpoint.pth.tar",
                       weights_only=True)
    # The earlier public code's names: features.* (timm's DeiT), head, head2.
    assert {"head.weight", "head2.weight", "features.blocks.11.norm1.weight"} <= \
        set(saved["state_dict"])
    schedule = json.loads((tmp_path / "train_log" / "b" / "lr_schedule.json").read_text())
    assert [g["params"] for g in schedule["groups"]] == [["head2"]]  # at 10 x lr
    assert schedule["groups"][0]["lr"] == pytest.approx([0.1, 0.1])
    assert config.get_configs([*common, "--experiment_name", "b"]).model.network == "vit"

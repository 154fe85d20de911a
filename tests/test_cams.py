"""CAM methods against independent computations (docs/method.md, docs/protocol.md)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.architectures import build_architecture
from wsol.cams import (CAM_METHODS, ISCAM, SSCAM, AblationCAM, CAMInputs, CAMOutput, ScoreCAM,
                       SmoothGradCAMPlusPlus,
                       compute_cams, evaluation_maps, gradcampp_weights, parse_methods,
                       verify_cam_model)
from wsol.model import CAMModel

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


# ---------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------
class Square(nn.Module):
    def forward(self, x):
        return x * x


class TinyNet(nn.Module):
    """Two convs -> ``act`` (the CAM layer, K channels) -> [square] -> GAP -> ``fc``,
    or with ``conv_head`` a 1x1 conv ``fc`` before GAP (Inception/SPG style)."""

    def __init__(self, k=6, classes=3, conv_head=False, square=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, k, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.square = Square() if square else nn.Identity()
        self.conv_head = conv_head
        self.fc = nn.Conv2d(k, classes, 1) if conv_head else nn.Linear(k, classes)

    def forward(self, x):
        a = self.square(self.act(self.conv2(torch.relu(self.conv1(x)))))
        if self.conv_head:
            return self.fc(a).mean((2, 3))
        return self.fc(a.mean((2, 3)))


def tiny(dual=False, conv_head=False, square=False, dtype=torch.float64, seed=0,
         mixed_sigmoid=True):
    torch.manual_seed(seed)
    model = CAMModel(TinyNet(conv_head=conv_head, square=square), "act", "fc", "tiny")
    if dual:
        model.add_sigmoid_branch("random")
        if mixed_sigmoid:  # weights of both signs, so the clamp has work to do
            with torch.no_grad():
                model.fc2.weight.copy_(torch.randn_like(model.fc2.weight))
        model.freeze_backbone()
    return model.to(dtype).eval()


def images(n=3, size=12, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype)


def activations(model, x):
    seen = {}
    handle = model.feature_module.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        out = model(x)
    handle.remove()
    return seen["a"], out


def branch_weight(model, branch):
    return model.class_weights(branch)[0]


# ---------------------------------------------------------------------------
# parse_methods
# ---------------------------------------------------------------------------
def test_parse_methods():
    assert parse_methods("cam,gradcam") == ["cam", "gradcam"]
    assert parse_methods(["gradcam", "cam", "gradcam"]) == ["gradcam", "cam"]
    assert parse_methods(" layercam , scorecam ") == ["layercam", "scorecam"]
    assert parse_methods("all") == list(CAM_METHODS)
    # Dual-CAM's 16 --method names (seed 002), then pytorch-grad-cam's and torchcam's others.
    assert set(CAM_METHODS) == {
        "gradcam", "fem", "hirescam", "gradcam++", "scorecam", "xgradcam", "ablationcam",
        "eigencam", "eigengradcam", "layercam", "fullgrad", "gradcamelementwise", "kpcacam",
        "shapleycam", "finercam", "cam",
        "smoothgradcam++", "refinecam", "sscam", "iscam", "legrad"}
    with pytest.raises(ValueError, match=r"'gradcamm'.*gradcam\+\+"):
        parse_methods("cam,gradcamm")
    with pytest.raises(ValueError):
        parse_methods("")


# ---------------------------------------------------------------------------
# GAP + linear head: closed forms
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("conv_head", [False, True])
def test_gap_linear_head_gradient_weights_equal_head_weights_over_z(conv_head):
    model = tiny(conv_head=conv_head)
    x = images()
    a, logits = activations(model, x)
    z = a.shape[2] * a.shape[3]
    targets = torch.tensor([0, 2, 1])
    out = compute_cams(model, x, targets, methods=["cam"] + GRADIENT_METHODS)
    w = branch_weight(model, "softmax")[targets]            # [B, K]
    cam = torch.einsum("bk,bkhw->bhw", w, a)
    assert torch.allclose(out.maps["cam"].double(), cam, atol=1e-6)
    # Grad-CAM and XGrad-CAM weights are w / Z, so their raw maps are CAM / Z;
    # HiResCAM equals CAM / Z element-wise; LayerCAM keeps the positive w only.
    for name in ("gradcam", "xgradcam", "hirescam"):
        assert torch.allclose(out.maps[name].double(), cam / z, atol=1e-6), name
    layer = torch.einsum("bk,bkhw->bhw", w.clamp_min(0), a) / z
    assert torch.allclose(out.maps["layercam"].double(), layer, atol=1e-6)
    # And the weights themselves (not just the maps):
    g = (w / z)[:, :, None, None].expand_as(a)
    inputs = CAMInputs(model=model, images=x, targets=targets, branch="softmax", clamp=False,
                       activations=a, gradients=g)
    assert torch.allclose(CAM_METHODS["gradcam"].channel_weights(inputs), w / z)
    live = a.sum((2, 3)) != 0
    assert torch.allclose(CAM_METHODS["xgradcam"].channel_weights(inputs)[live], (w / z)[live])
    # The logits are those of the same forward.
    assert torch.allclose(out.logits.double(), logits["logits"].double())


def test_targets_default_to_softmax_top1_and_choose_the_class():
    model = tiny(dual=True)
    with torch.no_grad():  # the sigmoid branch ranks the classes the other way round
        model.fc2.weight.copy_(-model.model.fc.weight)
        model.fc2.bias.copy_(-model.model.fc.bias)
    x = images()
    for methods in ("cam", "gradcam"):
        out = compute_cams(model, x, methods=methods)
        assert torch.equal(out.targets, out.logits.argmax(1))
        assert not torch.equal(out.targets, out.logits_sigmoid.argmax(1))
    a, _ = activations(model, x)
    for c in range(3):
        t = torch.full((3,), c)
        m = compute_cams(model, x, t, methods="cam", clamp=False).maps["cam"].double()
        expected = torch.einsum("k,bkhw->bhw", branch_weight(model, "sigmoid")[c], a)
        assert torch.allclose(m, expected, atol=1e-6)


# ---------------------------------------------------------------------------
# Hand-made activations and gradients
# ---------------------------------------------------------------------------
def test_gradcampp_closed_form_on_hand_made_tensors():
    # Channel 3 has negative activations (sum -2) and a gradient of 1, where
    # the denominator 2 g^2 + sum(A) g^3 is exactly 0: alpha is set to 0 there.
    a = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]],
                       [[0.5, 0.0], [1.5, 2.0]],
                       [[-1.0, -1.5], [0.5, 0.0]]]], dtype=torch.float64)
    g = torch.tensor([[[[0.2, -0.1], [0.0, 0.4]],
                       [[-0.3, 0.5], [0.1, 0.0]],
                       [[1.0, 0.25], [-0.5, 0.0]]]], dtype=torch.float64)
    expected = []
    for k in range(3):
        s = a[0, k].sum().item()
        total = 0.0
        for i in range(2):
            for j in range(2):
                gij = g[0, k, i, j].item()
                den = 2 * gij ** 2 + s * gij ** 3
                alpha = 0.0 if den == 0 else gij ** 2 / den
                total += alpha * max(gij, 0.0)
        expected.append(total)
    assert expected[2] == pytest.approx(0.25 / (2 - 2 * 0.25))  # only the g = .25 term
    weights = gradcampp_weights(a, g, g ** 2, g ** 3)
    assert torch.allclose(weights, torch.tensor([expected], dtype=torch.float64))
    inputs = CAMInputs(model=None, images=None, targets=None, branch="softmax", clamp=False,
                       activations=a, gradients=g)
    m = CAM_METHODS["gradcam++"].raw_map(inputs)
    assert torch.allclose(m[0], sum(e * a[0, k] for k, e in enumerate(expected)))


def test_layercam_and_hirescam_element_wise_formulas():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 4, 3, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 4, 3, 5, generator=gen, dtype=torch.float64)
    inputs = CAMInputs(model=None, images=None, targets=None, branch="softmax", clamp=False,
                       activations=a, gradients=g)
    layer = CAM_METHODS["layercam"].raw_map(inputs)
    hires = CAM_METHODS["hirescam"].raw_map(inputs)
    for b in range(2):
        for i in range(3):
            for j in range(5):
                lv = sum(max(g[b, k, i, j].item(), 0.0) * a[b, k, i, j].item() for k in range(4))
                hv = sum(g[b, k, i, j].item() * a[b, k, i, j].item() for k in range(4))
                assert layer[b, i, j].item() == pytest.approx(lv)
                assert hires[b, i, j].item() == pytest.approx(hv)
    # The clamp (sigmoid branch) removes exactly the negative element-wise weights
    # of HiResCAM; LayerCAM already uses ReLU(g) and is unchanged.
    clamped = CAMInputs(model=None, images=None, targets=None, branch="sigmoid", clamp=True,
                        activations=a, gradients=g)
    assert torch.allclose(CAM_METHODS["hirescam"].raw_map(clamped), layer)
    assert torch.allclose(CAM_METHODS["layercam"].raw_map(clamped), layer)


def test_xgradcam_closed_form():
    a = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]], [[2.0, 2.0]]]], dtype=torch.float64)
    g = torch.tensor([[[[0.5, -1.0]], [[7.0, 7.0]], [[0.25, 0.75]]]], dtype=torch.float64)
    inputs = CAMInputs(model=None, images=None, targets=None, branch="softmax", clamp=False,
                       activations=a, gradients=g)
    w = CAM_METHODS["xgradcam"].channel_weights(inputs)
    # (1*.5 + 3*-1)/4, empty channel -> 0, (2*.25 + 2*.75)/4
    assert torch.allclose(w, torch.tensor([[-0.625, 0.0, 0.5]], dtype=torch.float64))


def test_eigencam_is_the_first_principal_direction():
    # Rank-1 activations: position pattern u (>= 0) times channel loading v.
    u = torch.tensor([0.0, 1.0, 3.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    v = torch.tensor([0.3, 1.0, 0.1, 0.7], dtype=torch.float64)
    a = torch.einsum("p,k->kp", u, v).reshape(1, 4, 2, 3)
    a = torch.cat([a, 2 * a])  # two images, the second scaled
    inputs = CAMInputs(model=None, images=None, targets=None, branch="softmax", clamp=False,
                       activations=a, gradients=None)
    m = CAM_METHODS["eigencam"].raw_map(inputs)
    # Projection on v / |v| gives u * |v| (sign fixed to a positive sum).
    expected = u.reshape(2, 3) * v.norm()
    assert torch.allclose(m[0], expected, atol=1e-9)
    assert torch.allclose(m[1], 2 * expected, atol=1e-9)
    # Against a full SVD, both when positions <= channels and the other way round.
    gen = torch.Generator().manual_seed(5)
    for k, h, w in ((16, 2, 3), (3, 4, 5)):
        a = torch.rand(2, k, h, w, generator=gen, dtype=torch.float64)
        flat = a.flatten(2).transpose(1, 2)
        u, s, _ = torch.linalg.svd(flat, full_matrices=False)
        ref = u[:, :, 0] * s[:, :1]
        ref = ref * ref.sum(1, keepdim=True).sign()
        inputs = CAMInputs(model=None, images=None, targets=None, branch="softmax",
                           clamp=False, activations=a, gradients=None)
        m = CAM_METHODS["eigencam"].raw_map(inputs)
        assert torch.allclose(m.flatten(1), ref, atol=1e-9)


# ---------------------------------------------------------------------------
# Real backward on a nonlinear head
# ---------------------------------------------------------------------------
def test_gradient_methods_use_the_true_gradient_of_the_raw_branch_logit():
    model = tiny(dual=True, square=True)  # dy/dA = 2 w A / Z: varies over space
    x = images()
    targets = torch.tensor([1, 0, 2])
    a, _ = activations(model, x)                       # a = ReLU output (before Square)
    leaf = a.clone().requires_grad_(True)
    w = branch_weight(model, "sigmoid")
    logits = (leaf * leaf).mean((2, 3)) @ w.t() + model.fc2.bias.detach()
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), leaf)
    for clamp in (False, True):
        out = compute_cams(model, x, targets, methods=GRADIENT_METHODS, branch="sigmoid",
                           clamp=clamp)
        gw = g.mean((2, 3))
        gw = gw.clamp_min(0) if clamp else gw
        assert torch.allclose(out.maps["gradcam"].double(),
                              torch.einsum("bk,bkhw->bhw", gw, a), atol=1e-6)
        pp = gradcampp_weights(a, g, g ** 2, g ** 3)
        pp = pp.clamp_min(0) if clamp else pp
        assert torch.allclose(out.maps["gradcam++"].double(),
                              torch.einsum("bk,bkhw->bhw", pp, a), atol=1e-6)
        assert torch.allclose(out.maps["layercam"].double(),
                              (g.clamp_min(0) * a).sum(1), atol=1e-6)
        hg = g.clamp_min(0) if clamp else g
        assert torch.allclose(out.maps["hirescam"].double(), (hg * a).sum(1), atol=1e-6)


def test_clamp_removes_exactly_the_negative_weights():
    model = tiny(dual=True)
    x = images()
    a, _ = activations(model, x)
    targets = torch.tensor([0, 1, 2])
    w = branch_weight(model, "sigmoid")[targets]
    assert (w < 0).any() and (w > 0).any()
    methods = ["cam", "gradcam", "xgradcam", "gradcam++"]
    on = compute_cams(model, x, targets, methods=methods, branch="sigmoid", clamp=True)
    off = compute_cams(model, x, targets, methods=methods, branch="sigmoid", clamp=False)
    negative = torch.einsum("bk,bkhw->bhw", w.clamp_max(0), a)
    assert torch.allclose(off.maps["cam"].double() - on.maps["cam"].double(), negative, atol=1e-6)
    assert torch.allclose(on.maps["cam"].double(),
                          torch.einsum("bk,bkhw->bhw", w.clamp_min(0), a), atol=1e-6)
    z = a.shape[2] * a.shape[3]
    assert torch.allclose(on.maps["gradcam"].double(), on.maps["cam"].double() / z, atol=1e-6)
    assert torch.allclose(off.maps["gradcam"].double(), off.maps["cam"].double() / z, atol=1e-6)
    # The softmax branch is never clamped, whatever the flag says.
    soft = compute_cams(model, x, targets, methods="cam", branch="softmax", clamp=True)
    ws = branch_weight(model, "softmax")[targets]
    assert torch.allclose(soft.maps["cam"].double(), torch.einsum("bk,bkhw->bhw", ws, a),
                          atol=1e-6)


def test_branch_defaults_and_errors():
    vanilla, dual = tiny(), tiny(dual=True)
    x = images()
    assert compute_cams(vanilla, x).branch == "softmax"
    out = compute_cams(dual, x)
    assert out.branch == "sigmoid" and out.logits_sigmoid is not None
    assert compute_cams(vanilla, x).logits_sigmoid is None
    with pytest.raises(ValueError, match="sigmoid"):
        compute_cams(vanilla, x, branch="sigmoid")
    with pytest.raises(ValueError, match="branch"):
        compute_cams(dual, x, branch="both")
    with pytest.raises(ValueError):
        compute_cams(dual, x, targets=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_cams(dual, x, methods="gradcam,nope")


# ---------------------------------------------------------------------------
# The mechanism: one forward, one backward, nothing left behind
# ---------------------------------------------------------------------------
def counters(model):
    counts = {"forward": 0, "backward": 0, "backbone_backward": 0}
    handles = [
        model.model.register_forward_pre_hook(lambda m, i: counts.__setitem__(
            "forward", counts["forward"] + 1)),
        model.head_module.register_full_backward_hook(lambda m, gi, go: counts.__setitem__(
            "backward", counts["backward"] + 1)),
        model.model.conv1.register_full_backward_hook(lambda m, gi, go: counts.__setitem__(
            "backbone_backward", counts["backbone_backward"] + 1)),
    ]
    return counts, handles


def test_one_forward_and_one_backward_for_all_gradient_methods():
    model = tiny()  # vanilla: every parameter requires grad
    x = images()
    # The model check runs once per model and input size (a few passes on
    # two images); the counts below are those of every later call.
    verify_cam_model(model, x, ["cam"] + GRADIENT_METHODS + ["smoothgradcam++"])
    counts, handles = counters(model)
    compute_cams(model, x, methods=["cam"] + GRADIENT_METHODS)
    assert counts == {"forward": 1, "backward": 1, "backbone_backward": 0}
    counts.update(forward=0, backward=0)
    compute_cams(model, x, methods=["cam", "eigencam"])
    assert counts == {"forward": 1, "backward": 0, "backbone_backward": 0}
    counts.update(forward=0)
    compute_cams(model, x, methods=[SmoothGradCAMPlusPlus(samples=3)])
    assert counts["forward"] == 1 + 3 and counts["backward"] == 3
    counts.update(forward=0, backward=0)
    compute_cams(model, x, methods=[ScoreCAM(batch_size=4)])
    assert counts["forward"] == 1 + math.ceil(3 * 6 / 4) and counts["backward"] == 0
    for h in handles:
        h.remove()
    # No gradient is accumulated into any parameter.
    assert all(p.grad is None for p in model.parameters())


def test_frozen_eval_model_under_no_grad_still_gets_gradients_and_hooks_are_removed():
    model = tiny(dual=True)
    for p in model.parameters():
        p.requires_grad_(False)
    x = images()
    hooks_before = len(model.feature_module._forward_hooks)
    with torch.no_grad():
        out = compute_cams(model, x, methods=["cam", "gradcam"], branch="sigmoid")
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    z = out.maps["cam"].shape[1] * out.maps["cam"].shape[2]
    assert out.maps["gradcam"].abs().sum() > 0
    assert torch.allclose(out.maps["gradcam"], out.maps["cam"] / z, atol=1e-6)
    assert len(model.feature_module._forward_hooks) == hooks_before
    with torch.inference_mode():
        again = compute_cams(model, x, methods=["cam", "gradcam"], branch="sigmoid")
    assert torch.allclose(again.maps["gradcam"], out.maps["gradcam"])
    for t in (out.logits, out.maps["gradcam"]):
        assert not t.requires_grad and t.dtype in (torch.float32, torch.float64)
    assert out.maps["gradcam"].dtype == torch.float32


def test_hooks_and_grad_mode_restored_after_an_error():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = tiny()
    model.model.square = Boom()  # runs right after the CAM layer
    with pytest.raises(RuntimeError, match="boom"):
        compute_cams(model, images(), methods="gradcam")
    assert len(model.feature_module._forward_hooks) == 0
    assert torch.is_grad_enabled()


def test_in_place_op_after_the_cam_layer_does_not_change_the_maps():
    class InPlace(nn.Module):  # doubles in place, then halves: the logits are unchanged
        def forward(self, x):
            return x.mul_(2.0) * 0.5

    plain, inplace = tiny(), tiny()
    inplace.model.square = InPlace()
    x = images()
    a, _ = activations(plain, x)
    for methods in (["cam"], ["cam", "gradcam"]):
        out = compute_cams(inplace, x, torch.tensor([0, 1, 2]), methods=methods)
        w = branch_weight(inplace, "softmax")[torch.tensor([0, 1, 2])]
        assert torch.allclose(out.maps["cam"].double(), torch.einsum("bk,bkhw->bhw", w, a),
                              atol=1e-6)


# ---------------------------------------------------------------------------
# Score-CAM and Smooth Grad-CAM++
# ---------------------------------------------------------------------------
def slow_scorecam(model, x, targets, branch, topk=None):
    a, _ = activations(model, x)
    maps = []
    for b in range(x.shape[0]):
        channels = range(a.shape[1])
        if topk is not None:
            channels = a[b].mean((1, 2)).topk(topk).indices.tolist()
        weights = torch.zeros(a.shape[1], dtype=x.dtype)
        for k in channels:
            up = F.interpolate(a[b, k][None, None], size=x.shape[-2:], mode="bilinear",
                               align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                out = model(x[b:b + 1] * mask)
            if branch == "softmax":
                p = out["logits"].softmax(1)[0, targets[b]]
            else:
                p = out["logits_sigmoid"].sigmoid()[0, targets[b]]
            weights[k] = p
        maps.append(torch.einsum("k,khw->hw", weights, a[b]))
    return torch.stack(maps)


@pytest.mark.parametrize("branch,topk", [("softmax", None), ("sigmoid", None), ("sigmoid", 4)])
def test_scorecam_equals_a_slow_per_channel_loop(branch, topk):
    model = tiny(dual=True)
    x = images()
    targets = torch.tensor([2, 0, 1])
    expected = slow_scorecam(model, x, targets, branch, topk)
    out = compute_cams(model, x, targets, methods=ScoreCAM(batch_size=4, topk=topk),
                       branch=branch)
    assert torch.allclose(out.maps["scorecam"].double(), expected, atol=1e-6)


def test_smoothgradcampp_averages_gradient_powers_over_seeded_noise():
    model = tiny(dual=True, square=True)
    x = images()
    targets = torch.tensor([0, 2, 1])
    a, _ = activations(model, x)
    w = branch_weight(model, "sigmoid")
    n, sigma = 3, 0.2
    gen = torch.Generator().manual_seed(7)
    spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    moments = [torch.zeros_like(a) for _ in range(3)]
    for _ in range(n):
        noisy = x + sigma * spread * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        an, _ = activations(model, noisy)
        leaf = an.clone().requires_grad_(True)
        logit = (leaf * leaf).mean((2, 3)) @ w.t()
        (g,) = torch.autograd.grad(logit.gather(1, targets[:, None]).sum(), leaf)
        for p in range(3):
            moments[p] += g ** (p + 1) / n
    weights = gradcampp_weights(a, *moments).clamp_min(0)
    expected = torch.einsum("bk,bkhw->bhw", weights, a)
    def run(seed):
        return compute_cams(model, x, targets, methods=SmoothGradCAMPlusPlus(
            n, sigma, generator=torch.Generator().manual_seed(seed)))
    out = run(7).maps["smoothgradcam++"]
    assert torch.allclose(out.double(), expected, atol=1e-6)
    assert torch.equal(out, run(7).maps["smoothgradcam++"])
    assert not torch.allclose(out, run(8).maps["smoothgradcam++"])
    # Without noise it is Grad-CAM++.
    plain = compute_cams(model, x, targets,
                         methods=["gradcam++", SmoothGradCAMPlusPlus(samples=1, sigma=0.0)])
    assert torch.allclose(plain.maps["gradcam++"], plain.maps["smoothgradcam++"])


# ---------------------------------------------------------------------------
# Batches, real architectures
# ---------------------------------------------------------------------------
def test_batched_results_equal_per_image_results():
    model = tiny(dual=True, square=True)
    x = images(4)
    targets = torch.tensor([0, 1, 2, 1])
    # With the square after the CAM layer, cam is not defined (the model check refuses it).
    # Every method that fits a CNN without named stages, the random ones with few samples
    # (SS-CAM's noise follows the chunks of the batch, so it is left to its own test).
    kw = dict(methods=[ScoreCAM(batch_size=5), SmoothGradCAMPlusPlus(samples=1, sigma=0.0),
                       ISCAM(samples=3, batch_size=4), AblationCAM(batch_size=3),
                       *[m for m in CAM_METHODS if m not in ("cam", "legrad", "refinecam",
                                                             "sscam")]])
    for branch in ("softmax", "sigmoid"):
        batch = compute_cams(model, x, targets, branch=branch, **kw)
        for i in range(4):
            one = compute_cams(model, x[i:i + 1], targets[i:i + 1], branch=branch, **kw)
            for name, m in batch.maps.items():
                assert torch.allclose(m[i:i + 1], one.maps[name], atol=1e-5), (branch, name)
            assert torch.allclose(batch.logits[i:i + 1], one.logits)


@pytest.mark.parametrize("name", ["resnet18", "inception_v3"])
def test_real_architectures_all_methods(name):
    torch.manual_seed(0)
    base, spec = build_architecture(name, 4)
    model = CAMModel(base, spec.feature_layer, spec.head, name).add_sigmoid_branch()
    model.freeze_backbone()
    model.eval()
    size = 64 if name == "resnet18" else 96
    x = torch.randn(2, 3, size, size)
    methods = [ScoreCAM(topk=3), SmoothGradCAMPlusPlus(samples=2), SSCAM(samples=1),
               ISCAM(samples=1), "all"]
    if name == "inception_v3":
        # SS-CAM and IS-CAM run the whole network once per channel (2048 here, a minute);
        # their mechanism does not depend on the network and runs on ResNet18 above.
        methods = methods[:2] + [m for m in CAM_METHODS if m not in ("legrad", "sscam", "iscam",
                                                                     "scorecam",
                                                                     "smoothgradcam++")]
    out = compute_cams(model, x, methods=methods)
    skipped = {"legrad"} if name == "resnet18" else {"legrad", "sscam", "iscam"}
    assert set(CAM_METHODS) - set(out.maps) == skipped
    h, w = out.maps["cam"].shape[1:]
    z = h * w
    for name, m in out.maps.items():
        # FullGrad and RefineCAM are defined at the input's size.
        shape = (2, size, size) if name in ("fullgrad", "refinecam") else (2, h, w)
        assert m.shape == shape and m.dtype == torch.float32 and torch.isfinite(m).all(), name
    # A GAP head (linear or 1x1 conv): Grad-CAM = clamped CAM / Z on the sigmoid branch.
    assert torch.allclose(out.maps["gradcam"], out.maps["cam"] / z, rtol=1e-4, atol=1e-6)
    assert out.logits.shape == (2, 4) and out.logits_sigmoid.shape == (2, 4)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(out.logits, ref["logits"], atol=1e-5)
    ev = evaluation_maps(out, (size, size))
    for m in ev.values():
        assert m.shape == (2, size, size) and m.min() >= 0 and m.max() <= 1


# ---------------------------------------------------------------------------
# Evaluation-ready maps
# ---------------------------------------------------------------------------
def test_evaluation_maps_rectify_resize_and_normalise():
    raw = torch.tensor([[[-2.0, 1.0], [3.0, -1.0]],
                        [[5.0, 5.0], [5.0, 5.0]],
                        [[0.0, float("nan")], [1.0, 2.0]]])
    ev = evaluation_maps({"cam": raw, "gradcam": raw}, (4, 4), mode="bilinear")
    for name, pre in (("cam", raw), ("gradcam", raw.clamp_min(0))):
        up = F.interpolate(pre[:1, None], size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
        expected = (up - up.min()) / (up.max() - up.min())
        assert torch.allclose(ev[name][0], expected), name
        assert torch.equal(ev[name][1], torch.zeros(4, 4))   # constant map
        assert torch.equal(ev[name][2], torch.zeros(4, 4))   # NaN map
    # CAM is not rectified: its negative corner is the minimum; Grad-CAM's is cut.
    assert ev["cam"][0, 0, 0] == 0 and ev["gradcam"][0, 0, 0] == 0
    assert ev["cam"][0, 3, 3] > 0 and ev["gradcam"][0, 3, 3] == 0
    # An all-negative Grad-CAM becomes constant (zeros) after its ReLU.
    assert torch.equal(evaluation_maps({"gradcam": -raw[:1].abs() - 1}, (2, 2))["gradcam"],
                       torch.zeros(1, 2, 2))
    out = CAMOutput(maps={"cam": raw[:1]}, logits=torch.zeros(1, 2), logits_sigmoid=None)
    assert evaluation_maps(out, (4, 4))["cam"].shape == (1, 4, 4)
    with pytest.raises(ValueError):
        evaluation_maps({"mine": raw}, (4, 4))


def test_bicubic_resize_matches_opencv_inter_cubic_as_in_wsolevaluation():
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    raw = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0))
    ours = evaluation_maps({"cam": raw}, (224, 224), mode="bicubic")["cam"]
    for b in range(2):
        ref = cv2.resize(raw[b].numpy(), (224, 224), interpolation=cv2.INTER_CUBIC)
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        assert np.abs(ours[b].numpy() - ref).max() < 1e-5

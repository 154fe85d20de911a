"""One table of per-branch rules (wsol.branches): what each branch's maps
clamp, how its rows are labelled, which logits its fidelity reads; every
branch x clamp option x fidelity protocol x dataset kind through main.py."""
from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torchvision

import config
import main
from tests.conftest import copy_as_dataset
from wsol import CAMModel, compute_cams
from wsol.branches import clamp_rule, row_label
from wsol.results import format_table

# (branch, --no_clamp, --recam_clamp) -> (what is clamped, the row's label)
EXPECTED = {
    ("softmax", False, "none"): ("none", "softmax"),
    ("softmax", True, "product"): ("none", "softmax"),
    ("sigmoid", False, "none"): ("weights", "sigmoid"),
    ("sigmoid", True, "none"): ("none", "sigmoid (no clamp)"),
    ("recam", False, "none"): ("none", "recam"),
    ("recam", False, "factors"): ("factors", "recam (factors clamped)"),
    ("recam", False, "product"): ("weights", "recam (weights clamped)"),
    ("recam", True, "product"): ("weights", "recam (weights clamped)"),
}


@pytest.mark.parametrize("key", list(EXPECTED))
def test_what_each_branch_clamps_and_how_its_row_is_named(key):
    branch, no_clamp, recam_clamp = key
    rule = clamp_rule(branch, not no_clamp, recam_clamp)
    assert (rule, row_label(branch, rule)) == EXPECTED[key]


def test_recam_maps_clamp_what_the_rule_says():
    torch.manual_seed(0)
    model = CAMModel(torchvision.models.resnet18(num_classes=5), "layer4", "fc")
    model.add_sigmoid_branch("random").add_reactivation_head(seed=1).eval()
    images = torch.randn(3, 3, 48, 48)
    targets = torch.tensor([0, 3, 4])
    features = {}
    model.model.layer4.register_forward_hook(lambda m, i, o: features.__setitem__("A", o))
    w1 = model.fc2.weight.detach().clamp_min(0)  # the sigmoid branch is the BCE head
    w2 = model.fc_re.weight.detach()
    for recam_clamp, weights in (("none", w2 * w1), ("factors", w2.clamp_min(0) * w1),
                                 ("product", (w2 * w1).clamp_min(0))):
        model.set_recam_maps("product", recam_clamp)
        out = compute_cams(model, images, targets, ["cam"], branch="recam")
        expected = torch.einsum("bk,bkhw->bhw", weights[targets], features["A"])
        assert torch.allclose(out.maps["cam"], expected, atol=1e-5), recam_clamp
    assert bool((w2 * w1 < 0).any())  # the rules differ on this model


@pytest.fixture(scope="module")
def recam_run(tiny_synth_root, tmp_path_factory):
    """A dual-branch model with a re-activation head, on SYNTH (boxes and
    masks) and on the same images as OpenImages (masks only)."""
    root = tmp_path_factory.mktemp("branches")
    copy_as_dataset(tiny_synth_root, root, "SYNTH")
    copy_as_dataset(tiny_synth_root, root, "OpenImages")
    for split in ("val", "test"):  # SYNTH keeps its masks as well as its boxes
        (root / "metadata" / "SYNTH" / split / "localization_masks.txt").write_bytes(
            (tiny_synth_root / "metadata" / "SYNTH" / split / "localization_masks.txt")
            .read_bytes())
    for dataset in ("SYNTH", "OpenImages"):
        main.run(config.get_configs(argv(root, dataset, "v", "--epochs", "1", "--lr", "0.02",
                                         "--skip_eval")))
        main.run(config.get_configs(argv(
            root, dataset, "r", "--epochs", "1", "--lr", "0.02", "--recam", "--skip_eval",
            "--ft_ckpt", str(root / "runs" / dataset / "v" / "last_checkpoint.pth.tar"))))
    return root


def argv(root, dataset, name, *extra):
    return ["--dataset_name", dataset, "--num_classes", "10", "--architecture", "resnet18",
            "--experiment_name", name, "--data_root", str(root / "dataset"),
            "--metadata_root", str(root / "metadata"), "--root", str(root / "runs" / dataset),
            "--resize_size", "40", "--crop_size", "32", "--batch_size", "8", "--workers", "0",
            "--method", "cam", *extra]


@pytest.mark.parametrize("dataset,no_clamp,recam_clamp,protocol", [
    (d, n, r, p) for d, n, r, p in itertools.product(
        ("SYNTH", "OpenImages"), (False, True), ("none", "factors", "product"),
        ("softmax_head", "public_code"))
    if d == "SYNTH" or (not n and r == "factors")])
def test_every_branch_is_scored_with_its_rules(recam_run, dataset, no_clamp, recam_clamp,
                                                protocol):
    results = main.run(config.get_configs(argv(
        recam_run, dataset, "r", "--eval_only", "--cam_branch", "softmax,sigmoid,recam",
        "--recam_clamp", recam_clamp, "--fidelity", "--fidelity_protocol", protocol,
        *(["--no_clamp"] if no_clamp else []))))
    rows = {r["branch"]: r for r in results["rows"]}
    assert list(rows) == ["softmax", "sigmoid", "recam"]
    for branch, row in rows.items():
        rule = {"softmax": "none", "sigmoid": "none" if no_clamp else "weights",
                "recam": {"product": "weights"}.get(recam_clamp, recam_clamp)}[branch]
        label = {"none": "recam", "factors": "recam (factors clamped)",
                 "weights": "recam (weights clamped)"}[rule] if branch == "recam" else (
            "sigmoid (no clamp)" if branch == "sigmoid" and no_clamp else branch)
        assert (row["clamp_rule"], row["clamp"]) == (rule, rule != "none"), branch
        assert math.isfinite(row["Average Drop"]) and row["num_images"] == 10
        assert math.isfinite(row["PxAP"])
        line = format_table(results).splitlines()[2 + list(rows).index(branch)]
        assert re.split(r"\s{2,}", line)[:2] == ["cam", label]


def test_fidelity_does_not_apply_to_multi_label_data():
    with pytest.raises(config.ConfigError, match="--fidelity does not apply to SYNTH_ML, whose "
                       r"maps are scored as segmentation seeds \(seed mIoU\): drop it"):
        config.get_configs(["--dataset_name", "SYNTH_ML", "--fidelity"])
    with pytest.raises(config.ConfigError, match="--seed_threshold does not apply to CUB"):
        config.get_configs(["--dataset_name", "CUB", "--seed_threshold", "0.3"])
    with pytest.raises(config.ConfigError, match="--loc_threshold does not apply to OpenImages"):
        config.get_configs(["--dataset_name", "OpenImages", "--loc_threshold", "0.3"])

"""Checkpoints of the method's public code: its Grad-CAM networks record only
the backbone's name ('architecture': 'vgg16' / 'inception_v3'), and are
recognised by their keys in --eval_only, --ft_ckpt and explain.py.

The checkpoints here are laid out as the public code's trainer writes them
(``{'architecture', 'epoch', 'state_dict', 'optimizer'}``), with the weights
of torchvision's own networks, which its Grad-CAM networks are (plus the
branch ``fc2`` / ``classifier_2``).  With ``BEYOND_SOFTMAX_ROOT`` pointing at a
checkout of finallyupper/beyond-softmax, one more test writes them with its
own model code.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torchvision

import config
import explain
import main
from tests.conftest import copy_as_dataset
from wsol.architectures import recognise_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def public_inception(structure: str, classes: int = 10) -> dict[str, torch.Tensor]:
    """The public code's Grad-CAM InceptionV3: torchvision's, no auxiliary
    classifier, and for b2 a second Linear fc2."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, num_classes=classes, aux_logits=False,
                                          init_weights=False)
    state = net.state_dict()
    if structure == "b2":
        branch = torch.nn.Linear(2048, classes)
        state.update({f"fc2.{k}": v for k, v in branch.state_dict().items()})
    return state


def save_as_public_code(state: dict, architecture: str, path) -> None:
    """As the public code's Trainer._torch_save_model writes a checkpoint."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    torch.save({"architecture": architecture, "epoch": 3, "state_dict": state,
                "optimizer": optimizer.state_dict()}, str(path))


def test_recognised_by_keys_when_the_record_names_only_the_backbone():
    with torch.device("meta"):  # keys only: no memory for VGG16's 120M parameters
        vgg = torchvision.models.vgg16(num_classes=10).state_dict()
    keys = [*vgg, *(k.replace("classifier.", "classifier_2.") for k in vgg
                    if k.startswith("classifier."))]
    assert recognise_network("vgg16", keys)[0] == "vgg16_gradcam"
    assert "classifier.*, no conv6.*" in recognise_network("vgg16", keys)[1]
    assert recognise_network("vgg16", ["module." + k for k in keys])[0] == "vgg16_gradcam"
    cam_keys = ["features.0.weight", "conv6.weight", "conv6.bias", "fc.weight", "fc2.weight"]
    assert recognise_network("vgg16", cam_keys) == ("vgg16", "")
    assert recognise_network("vgg16_gradcam", cam_keys)[0] == "vgg16"
    inception = public_inception("b2")
    assert recognise_network("inception_v3", inception)[0] == "inception_v3_gradcam"
    assert recognise_network("inception_v3", ["SPG_A4.weight", "Mixed_6e.x"]) == (
        "inception_v3", "")
    # One network for both families: nothing to recognise.
    assert recognise_network("resnet50", ["layer4.0.conv1.weight", "fc.weight"]) == (
        "resnet50", "")


@pytest.fixture()
def workspace(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    return tmp_path


def seed_001_test_line(ws, experiment: str, ckpt: str) -> list[str]:
    """The seed README's test command (batch and workers shrunk, SYNTH at 96 px)."""
    return ["--experiment_name", experiment, "--dataset_name", "SYNTH",
            "--architecture", "inception_v3", "--method", "gradcam", "--root", str(ws / "runs"),
            "--large_feature_map", "FALSE", "--batch_size", "8", "--workers", "0",
            "--gpus", "0", "--model_structure", "b2", "--ft_ckpt", ckpt, "--eval_only",
            "--eval_checkpoint_type", "last",
            "--data_root", str(ws / "dataset"), "--metadata_root", str(ws / "metadata"),
            "--crop_size", "96", "--resize_size", "110", "--cam_curve_interval", "0.01"]


def test_the_seed_test_line_scores_a_public_gradcam_b2_checkpoint(workspace, capsys):
    folder = workspace / "runs" / "incep_gradcam"
    folder.mkdir(parents=True)
    state = public_inception("b2")
    save_as_public_code(state, "inception_v3", folder / "last_checkpoint.pth.tar")
    args = config.get_configs(seed_001_test_line(workspace, "incep_gradcam",
                                                 str(workspace / "vanilla.pth.tar")))
    assert args.model.network == "inception_v3_gradcam"
    results = main.run(args)
    assert "records --architecture inception_v3, and its weights are those of " \
           "inception_v3_gradcam" in capsys.readouterr().err
    assert results["architecture"] == "inception_v3_gradcam"
    assert [r["branch"] for r in results["rows"]] == ["sigmoid"]
    # explain.py rebuilds the same network from the file alone, weights as saved.
    model, info = explain.load_model(explain.build_parser().parse_args(
        ["--ckpt", str(folder / "last_checkpoint.pth.tar"), "--image", "x"]))
    assert info["architecture"] == "inception_v3_gradcam" and model.is_dual
    assert torch.equal(model.model.fc.weight, state["fc.weight"])
    assert torch.equal(model.fc2.weight, state["fc2.weight"])
    # An explicit flag that names the network agrees with it ...
    main.run(config.get_configs([*seed_001_test_line(workspace, "incep_gradcam", "x"),
                                 "--network_type", "gradcam"]))
    # ... one that names the other network is refused, naming both.
    with pytest.raises(config.ConfigError, match="trained with --architecture "
                       "inception_v3_gradcam, not inception_v3"):
        config.get_configs([*seed_001_test_line(workspace, "incep_gradcam", "x"),
                            "--network_type", "cam"])


def test_a_public_vanilla_checkpoint_of_the_other_network_is_fine_tuned_as_what_it_is(
        workspace, capsys):
    ckpt = workspace / "vanilla.pth.tar"
    state = public_inception("vanilla")
    save_as_public_code(state, "inception_v3", ckpt)
    argv = ["--experiment_name", "ft", "--dataset_name", "SYNTH", "--architecture",
            "inception_v3", "--method", "cam", "--root", str(workspace / "runs"),
            "--model_structure", "b2", "--ft_ckpt", str(ckpt), "--epochs", "0", "--skip_eval",
            "--workers", "0", "--data_root", str(workspace / "dataset"),
            "--metadata_root", str(workspace / "metadata"), "--crop_size", "96"]
    args = config.get_configs(argv)
    assert args.model.network == "inception_v3_gradcam"  # --method cam alone picks the CAM network
    main.run(args)
    log = capsys.readouterr().err
    assert "--ft_ckpt" in log and "training inception_v3_gradcam" in log
    saved = torch.load(workspace / "runs" / "ft" / "last_checkpoint.pth.tar",
                       weights_only=True)
    assert saved["architecture"] == "inception_v3_gradcam"
    assert torch.equal(saved["state_dict"]["Mixed_7c.branch1x1.conv.weight"],
                       state["Mixed_7c.branch1x1.conv.weight"])
    # --network_type says explicitly: the CAM network, which the file does not fit.
    explicit = config.get_configs([*argv, "--network_type", "cam"])
    assert explicit.model.network == "inception_v3"


WRITER = r"""
import sys, torch, importlib, contextlib, io
sys.path.insert(0, sys.argv[1])
public = importlib.import_module("wsol")
assert public.__file__.startswith(sys.argv[1]), public.__file__
arch, structure, out = sys.argv[2:5]
kw = dict(dataset_name="ILSVRC", num_classes=10, large_feature_map=False, last_layer="fc",
          unfreeze_layer="fc2" if structure == "b2" else "all", model_structure=structure,
          init_weights=True, debug=False, ft_ckpt=None)
with contextlib.redirect_stdout(io.StringIO()):
    model = public.__dict__[arch](architecture_type="cam", pretrained=False,
                                  pretrained_path=None, **kw)
torch.save({"architecture": arch, "epoch": 3, "state_dict": model.state_dict(),
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict()}, out)
"""


@pytest.mark.skipif(not os.environ.get("BEYOND_SOFTMAX_ROOT"),
                    reason="set BEYOND_SOFTMAX_ROOT to a checkout of finallyupper/beyond-softmax")
def test_checkpoints_written_by_the_public_code_itself(workspace):
    folder = workspace / "runs" / "public"
    folder.mkdir(parents=True)
    path = folder / "last_checkpoint.pth.tar"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", WRITER, os.environ["BEYOND_SOFTMAX_ROOT"],
                    "inception_v3", "b2", str(path)], check=True, env=env,
                   cwd=str(workspace))
    results = main.run(config.get_configs(seed_001_test_line(workspace, "public", "x")))
    assert results["architecture"] == "inception_v3_gradcam"
    written = torch.load(path, weights_only=True)["state_dict"]
    model, _ = explain.load_model(explain.build_parser().parse_args(
        ["--ckpt", str(path), "--image", "x"]))
    own = {model.public_name(k): v for k, v in model.state_dict().items()}
    assert set(own) == set(written)
    assert all(torch.equal(own[k], written[k]) for k in written)

"""The command line: the seeds' commands, the end-to-end run and user errors."""
import json
import os
import shlex
import shutil

import pytest
import torch

import config
import main
from tests.conftest import copy_as_dataset
from wsol.architectures import build_architecture

# The seeds' command lines (../shared/seeds/001_*.txt and 002_*.txt), verbatim
# but for their placeholders.
SEED_001_TRAIN = """--experiment_name {exp} --dataset_name {ds} --architecture vgg16 --method {method}
 --root {root} --large_feature_map FALSE --epoch 3 --batch_size 32 --lr_decay_frequency 3
 --workers 4 --gpus 0 --lr 0.003 --weight_decay 5.00E-04 --model_structure b2
 --unfreeze_layer fc2 --ft_ckpt {ckpt}"""
SEED_001_TEST = """--experiment_name {exp} --dataset_name {ds} --architecture vgg16 --method {method}
 --root {root} --large_feature_map FALSE --batch_size 32 --workers 4 --gpus 0
 --model_structure b2 --ft_ckpt {ckpt} --eval_only --eval_checkpoint_type last"""
SEED_002_TRAIN = """--dataset_name {ds} --architecture vgg16 --wsol_method cam --method cam
 --experiment_name {exp} --wandb_name {exp} --root {root} --large_feature_map FALSE --epoch 10
 --batch_size 32 --lr_decay_frequency 3 --workers 4 --gpus 1 --lr 0.003
 --weight_decay 5.00E-04 --model_structure b2 --ft_ckpt {ckpt} --unfreeze_layer fc2
 --project vgg16-0"""
SEED_002_TEST = SEED_002_TRAIN + " --eval_only --eval_checkpoint_type last"


def seed_args(template, **values):
    return shlex.split(template.format(**values))


def test_seed_train_command_keeps_its_documented_meaning():
    args = config.get_configs(seed_args(SEED_002_TRAIN, ds="CUB", exp="e", root="dataset/CUB",
                                        ckpt="v.pth"))
    assert (args.epochs, args.batch_size, args.lr, args.weight_decay) == (10, 32, 0.003, 5e-4)
    assert args.large_feature_map is False and args.model_structure == "b2"
    assert args.unfreeze_layers == ("fc2",) and args.cam_branches == ["sigmoid"]
    assert args.num_classes == 200 and args.image_root == "dataset/CUB"
    assert args.wandb == "off" and args.project == "vgg16-0" and args.wandb_name == "e"
    assert config.get_configs(["--dataset_name", "CARS"]).num_classes == 196


@pytest.fixture(scope="module")
def seed_workspace(tiny_synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    for name in ("ILSVRC", "CUB", "CARS", "OpenImages"):
        copy_as_dataset(tiny_synth_root, root, name)
    # A vanilla VGG16-CAM checkpoint in wsolevaluation's format (DataParallel prefix).
    torch.manual_seed(0)
    model, _ = build_architecture("vgg16", 1000)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 9}, root / "vgg16_vanilla.pth.tar")
    return root


def test_seed_commands_train_then_evaluate(seed_workspace, monkeypatch, capsys):
    monkeypatch.chdir(seed_workspace)
    values = dict(exp="ilsvrc_b2", ds="ILSVRC", method="gradcam",
                  root=str(seed_workspace / "dataset" / "ILSVRC"),
                  ckpt=str(seed_workspace / "vgg16_vanilla.pth.tar"))
    assert main.main(seed_args(SEED_001_TRAIN, **values)) == 0
    folder = seed_workspace / "train_log" / "ilsvrc_b2"
    assert {"last_checkpoint.pth.tar", "epoch3_checkpoint.pth.tar", "log.log",
            "results_test.json"} <= set(os.listdir(folder))
    trained = json.loads((folder / "results_test.json").read_text())
    assert main.main(seed_args(SEED_001_TEST, **values)) == 0
    evaluated = json.loads((folder / "results_test.json").read_text())
    assert [r["branch"] for r in evaluated["rows"]] == ["sigmoid"]
    assert evaluated["rows"][0]["MaxBoxAccV2"] == trained["rows"][0]["MaxBoxAccV2"]
    # The frozen softmax head classifies: a random 1000-way VGG gets nothing right here.
    assert evaluated["classification"]["Top-1 Cls"] == trained["classification"]["Top-1 Cls"]
    assert "MaxBoxAccV2" in capsys.readouterr().out


@pytest.mark.parametrize("dataset", ["CUB", "CARS", "OpenImages"])
def test_seed_inference_command_on_every_dataset_layout(seed_workspace, monkeypatch, dataset):
    monkeypatch.chdir(seed_workspace)
    source = seed_workspace / "train_log" / "ilsvrc_b2" / "last_checkpoint.pth.tar"
    if not source.exists():
        pytest.skip("needs test_seed_commands_train_then_evaluate")
    exp = f"{dataset.lower()}_b2"
    (seed_workspace / "train_log" / exp).mkdir(parents=True, exist_ok=True)
    shutil.copy(source, seed_workspace / "train_log" / exp / "last_checkpoint.pth.tar")
    argv = seed_args(SEED_002_TEST, ds=dataset, exp=exp,
                     root=str(seed_workspace / "dataset" / dataset),
                     ckpt=str(seed_workspace / "vgg16_vanilla.pth.tar"))
    argv += ["--num_classes", "1000"]  # the copied ILSVRC checkpoint has 1000 classes
    assert main.main(argv) == 0
    result = json.loads((seed_workspace / "train_log" / exp / "results_test.json").read_text())
    row = result["rows"][0]
    if dataset == "OpenImages":
        assert 0 <= row["PxAP"] <= 100 and "MaxBoxAccV2" not in row
    else:
        assert 0 <= row["MaxBoxAccV2"] <= 100 and "PxAP" not in row


def run_tiny(root, name, extra):
    argv = ["--experiment_name", name, "--dataset_name", "SYNTH", "--architecture", "resnet18",
            "--data_root", str(root / "dataset"), "--metadata_root", str(root / "metadata"),
            "--log_root", str(root / "train_log"), "--resize_size", "40", "--crop_size", "32",
            "--batch_size", "8", "--workers", "0", "--cam_curve_interval", "0.01",
            "--method", "cam,gradcam", *extra]
    return main.run(config.get_configs(argv))


def test_end_to_end_vanilla_then_b2_is_in_range_and_deterministic(tiny_synth_root, tmp_path):
    root = tmp_path
    copy_as_dataset(tiny_synth_root, root, "SYNTH")
    run_tiny(root, "vanilla", ["--epochs", "1", "--lr", "0.01"])
    ckpt = str(root / "train_log" / "vanilla" / "last_checkpoint.pth.tar")
    results = [run_tiny(root, f"b2_{i}", ["--epochs", "1", "--lr", "0.01", "--ft_ckpt", ckpt,
                                          "--cam_branch", "softmax,sigmoid"]) for i in range(2)]
    first, second = results
    assert [(r["method"], r["branch"]) for r in first["rows"]] == [
        ("cam", "softmax"), ("gradcam", "softmax"), ("cam", "sigmoid"), ("gradcam", "sigmoid")]
    for row in first["rows"]:
        for key in ("MaxBoxAccV2", "MaxBoxAcc", "GT-known Loc", "Top-1 Loc", "PxAP"):
            assert 0.0 <= row[key] <= 100.0, key
        assert row["Top-1 Loc"] <= row["GT-known Loc"]
    strip = lambda r: {k: v for k, v in r.items() if k != "eval_seconds" and k != "experiment"}
    assert strip(first) == strip(second)
    vanilla_rows = run_tiny(root, "vanilla", ["--eval_only"])["rows"]
    softmax_rows = [r for r in first["rows"] if r["branch"] == "softmax"]
    # The frozen backbone and softmax head of b2 are the vanilla model, unchanged.
    assert [r["MaxBoxAccV2"] for r in vanilla_rows] == [r["MaxBoxAccV2"] for r in softmax_rows]


def test_user_errors_give_one_clear_message(tiny_synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dataset" / "CUB").mkdir(parents=True)  # images exist, metadata does not
    cases = [
        (["--architecture", "alexnet"], "invalid choice: 'alexnet'"),
        (["--experiment_name", "x", "--eval_only", "--model_structure", "b2",
          "--dataset_name", "CUB"], "no checkpoint to evaluate"),
        (["--experiment_name", "y", "--model_structure", "b2", "--dataset_name", "CUB"],
         "--ft_ckpt"),
        (["--experiment_name", "z", "--dataset_name", "CUB", "--metadata_root", "nowhere"],
         "metadata folder not found: nowhere"),
        (["--experiment_name", "w", "--cam_branch", "sigmoid"], "needs a dual-branch model"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) if "invalid choice" in message else _no_raise():
            code = main.main(argv)
            assert code == 2
        assert message in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_existing_experiment_is_not_overwritten(tmp_path):
    folder = tmp_path / "train_log" / "exp"
    folder.mkdir(parents=True)
    (folder / "last_checkpoint.pth.tar").write_bytes(b"x")
    args = config.get_configs(["--experiment_name", "exp", "--log_root", str(tmp_path / "train_log")])
    with pytest.raises(config.ConfigError, match="--override_cache"):
        config.configure_log_folder(args)
    assert (folder / "last_checkpoint.pth.tar").exists()

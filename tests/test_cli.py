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
from wsol.errors import UserError
from wsol.runtime.experiment import Experiment

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
    args = config.get_configs(seed_args(SEED_002_TRAIN, ds="CUB", exp="e",
                                        root="experiment/CUB", ckpt="v.pth"))
    optim, model = args.optim, args.model
    assert (optim.epochs, optim.batch_size, optim.lr, optim.weight_decay) == (10, 32, 0.003, 5e-4)
    assert model.large_feature_map is False and model.model_structure == "b2"
    assert model.unfreeze == ("fc2",) and args.cams.branches == ("sigmoid",)
    assert model.num_classes == 200
    # --root is the experiment root; images and metadata come from their own roots.
    assert args.log_folder == os.path.join("experiment/CUB", "e")
    assert args.data.image_root == os.path.join("dataset/", "CUB")
    assert args.data.metadata_folder == os.path.join("metadata/", "CUB")
    runtime = args.runtime
    assert runtime.wandb == "off" and runtime.project == "vgg16-0" and runtime.wandb_name == "e"
    assert model.network == "vgg16"  # --method cam: the CAM network
    gradient = config.get_configs(seed_args(SEED_001_TRAIN, ds="ILSVRC", exp="e", root="r",
                                            method="gradcam", ckpt="v.pth"))
    assert gradient.model.network == "vgg16_gradcam"  # what the public code builds for gradcam
    assert config.get_configs(["--dataset_name", "CARS"]).model.num_classes == 196


def _wsolevaluation_checkpoint(path, architecture, classes):
    """A vanilla checkpoint as wsolevaluation's code writes it (DataParallel keys)."""
    torch.manual_seed(0)
    model, _ = build_architecture(architecture, classes)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 9, "architecture": "vgg16"}, path)


def _one_train_image_per_class(folder):
    """Keep the first training image of each class: the seed lines train VGG16 at 224 px
    for up to 10 epochs, and one batch of 10 images tests the same code as 20."""
    labels = (folder / "class_labels.txt").read_text().splitlines()
    first: dict[str, str] = {}
    for line in labels:
        image, label = line.split(",")
        first.setdefault(label, image)
    keep = set(first.values())
    for path in folder.glob("*.txt"):
        lines = [line for line in path.read_text().splitlines() if line.split(",")[0] in keep]
        path.write_text("".join(line + "\n" for line in lines))


@pytest.fixture(scope="module")
def seed_workspace(tiny_synth_root, tmp_path_factory):
    """dataset/<DS> and metadata/<DS> as the seed READMEs lay them out, and a
    vanilla VGG16-CAM checkpoint in wsolevaluation's format."""
    root = tmp_path_factory.mktemp("seeds")
    for name in ("ILSVRC", "CUB", "CARS", "OpenImages"):
        copy_as_dataset(tiny_synth_root, root, name)
        _one_train_image_per_class(root / "metadata" / name / "train")
    _wsolevaluation_checkpoint(root / "vgg16_vanilla.pth.tar", "vgg16", 1000)
    return root


def test_seed_001_cam_lines_train_then_evaluate_under_root(seed_workspace, monkeypatch, capsys):
    monkeypatch.chdir(seed_workspace)
    experiments = seed_workspace / "experiment" / "ILSVRC"
    values = dict(exp="ilsvrc_b2", ds="ILSVRC", method="cam", root=str(experiments),
                  ckpt=str(seed_workspace / "vgg16_vanilla.pth.tar"))
    assert main.main(seed_args(SEED_001_TRAIN, **values)) == 0
    folder = experiments / "ilsvrc_b2"
    assert {"last_checkpoint.pth.tar", "1_checkpoint.pth.tar", "3_checkpoint.pth.tar",
            "log.log", "lr_schedule.json", "results_test.json"} <= set(os.listdir(folder))
    # The public code trains VGG16's branch at 10 x --lr and decays before epoch 3.
    schedule = json.loads((folder / "lr_schedule.json").read_text())
    assert [g["params"] for g in schedule["groups"]] == [["fc2"]]
    assert schedule["groups"][0]["lr"] == pytest.approx([0.03, 0.03, 0.003], rel=1e-12)
    saved = torch.load(folder / "last_checkpoint.pth.tar", weights_only=True)
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.003, rel=1e-12)
    assert saved["architecture"] == "vgg16" and "fc2.weight" in saved["state_dict"]
    trained = json.loads((folder / "results_test.json").read_text())
    assert main.main(seed_args(SEED_001_TEST, **values)) == 0
    evaluated = json.loads((folder / "results_test.json").read_text())
    assert [r["branch"] for r in evaluated["rows"]] == ["sigmoid"]
    assert evaluated["rows"][0]["MaxBoxAccV2"] == trained["rows"][0]["MaxBoxAccV2"]
    assert evaluated["classification"]["Top-1 Cls"] == trained["classification"]["Top-1 Cls"]
    assert "MaxBoxAccV2" in capsys.readouterr().out
    assert not (seed_workspace / "train_log").exists()  # nothing outside --root


@pytest.mark.slow
def test_seed_001_gradcam_lines_build_the_public_codes_gradcam_network(seed_workspace,
                                                                         monkeypatch):
    # The public code trains torchvision's VGG16 (MLP head, MLP sigmoid branch
    # classifier_2) for --method gradcam; its vanilla checkpoint is of that network.
    # One epoch (the last --epoch wins): each checkpoint of this network is 1.5 GB, and the
    # line's three-epoch schedule is the CAM test's above.
    monkeypatch.chdir(seed_workspace)
    vanilla = seed_workspace / "vgg16_gradcam_vanilla.pth.tar"
    _wsolevaluation_checkpoint(vanilla, "vgg16_gradcam", 1000)
    experiments = seed_workspace / "experiment" / "ILSVRC"
    values = dict(exp="ilsvrc_gradcam_b2", ds="ILSVRC", method="gradcam",
                  root=str(experiments), ckpt=str(vanilla))
    folder = experiments / "ilsvrc_gradcam_b2"
    try:
        assert main.main(seed_args(SEED_001_TRAIN, **values) + ["--epoch", "1"]) == 0
        saved = torch.load(folder / "last_checkpoint.pth.tar", weights_only=True,
                           map_location="cpu")
        assert saved["architecture"] == "vgg16_gradcam"
        assert {"classifier.6.weight", "classifier_2.0.weight",
                "classifier_2.6.weight"} <= set(saved["state_dict"])
        schedule = json.loads((folder / "lr_schedule.json").read_text())
        assert [g["params"] for g in schedule["groups"]] == [["classifier_2"]]
        assert schedule["groups"][0]["lr"] == pytest.approx([0.03], rel=1e-12)  # 10 x --lr
        assert main.main(seed_args(SEED_001_TEST, **values)) == 0
        result = json.loads((folder / "results_test.json").read_text())
        assert [(r["method"], r["branch"]) for r in result["rows"]] == [("gradcam", "sigmoid")]
        assert result["architecture"] == "vgg16_gradcam"
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # about 5 GB of checkpoints
        vanilla.unlink()


@pytest.mark.slow
def test_seed_002_lines_train_then_evaluate(seed_workspace, monkeypatch):
    monkeypatch.chdir(seed_workspace)
    experiments = seed_workspace / "experiment" / "CUB"
    values = dict(exp="vgg16_cam_ours", ds="CUB", root=str(experiments),
                  ckpt=str(seed_workspace / "vgg16_vanilla.pth.tar"))
    argv = seed_args(SEED_002_TRAIN, **values) + ["--num_classes", "1000"]
    assert main.main(argv) == 0
    folder = experiments / "vgg16_cam_ours"
    schedule = json.loads((folder / "lr_schedule.json").read_text())
    assert schedule["groups"][0]["lr"] == pytest.approx(
        [0.03, 0.03, 0.003, 0.003, 0.003, 3e-4, 3e-4, 3e-4, 3e-5, 3e-5], rel=1e-9)
    assert main.main(seed_args(SEED_002_TEST, **values) + ["--num_classes", "1000"]) == 0
    result = json.loads((folder / "results_test.json").read_text())
    assert [(r["method"], r["branch"]) for r in result["rows"]] == [("cam", "sigmoid")]


@pytest.mark.parametrize("dataset", ["CARS", "OpenImages"])
def test_seed_inference_command_on_every_dataset_layout(seed_workspace, monkeypatch, dataset):
    monkeypatch.chdir(seed_workspace)
    source = (seed_workspace / "experiment" / "ILSVRC" / "ilsvrc_b2" /
              "last_checkpoint.pth.tar")
    if not source.exists():
        pytest.skip("needs test_seed_001_cam_lines_train_then_evaluate_under_root")
    exp = f"{dataset.lower()}_b2"
    experiments = seed_workspace / "experiment" / dataset
    (experiments / exp).mkdir(parents=True, exist_ok=True)
    shutil.copy(source, experiments / exp / "last_checkpoint.pth.tar")
    argv = seed_args(SEED_002_TEST, ds=dataset, exp=exp, root=str(experiments),
                     ckpt=str(seed_workspace / "vgg16_vanilla.pth.tar"))
    argv += ["--num_classes", "1000"]  # the copied ILSVRC checkpoint has 1000 classes
    assert main.main(argv) == 0
    result = json.loads((experiments / exp / "results_test.json").read_text())
    row = result["rows"][0]
    if dataset == "OpenImages":
        assert 0 <= row["PxAP"] <= 100 and "MaxBoxAccV2" not in row
    else:
        assert 0 <= row["MaxBoxAccV2"] <= 100 and "PxAP" not in row


def test_a_run_that_fails_before_its_first_checkpoint_does_not_block_its_rerun(
        seed_workspace, monkeypatch, capsys):
    monkeypatch.chdir(seed_workspace)
    values = dict(exp="retry", ds="ILSVRC", method="cam", root="experiment/ILSVRC",
                  ckpt="missing.pth.tar")
    assert main.main(seed_args(SEED_001_TRAIN, **values)) == 2
    assert "--ft_ckpt missing.pth.tar: no such file" in capsys.readouterr().err
    assert not (seed_workspace / "experiment" / "ILSVRC" / "retry").exists()
    # A folder that only holds a failed run's log is not an experiment either.
    leftover = seed_workspace / "experiment" / "ILSVRC" / "retry"
    leftover.mkdir(parents=True)
    (leftover / "log.log").write_text("an earlier failure")
    (leftover / "config.json").write_text("{}")
    args = config.get_configs(seed_args(SEED_001_TRAIN, **values))
    with Experiment(args) as experiment:
        assert (experiment.folder, experiment.created) == (
            os.path.join("experiment/ILSVRC", "retry"), True)


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
    strip = lambda r: {k: v for k, v in r.items() if k not in ("eval_seconds", "experiment", "run")}
    assert strip(first) == strip(second)
    vanilla_rows = run_tiny(root, "vanilla", ["--eval_only"])["rows"]
    softmax_rows = [r for r in first["rows"] if r["branch"] == "softmax"]
    # The frozen backbone and softmax head of b2 are the vanilla model, unchanged.
    assert [r["MaxBoxAccV2"] for r in vanilla_rows] == [r["MaxBoxAccV2"] for r in softmax_rows]


def test_user_errors_give_one_clear_message(tiny_synth_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dataset" / "CUB").mkdir(parents=True)  # images exist, metadata does not
    cases = [
        (["--architecture", "alexnet"], "unknown architecture 'alexnet'"),
        (["--experiment_name", "x", "--eval_only", "--model_structure", "b2",
          "--dataset_name", "CUB"], "no checkpoint to evaluate"),
        (["--experiment_name", "y", "--model_structure", "b2", "--dataset_name", "CUB"],
         "--ft_ckpt"),
        (["--experiment_name", "z", "--dataset_name", "CUB", "--metadata_root", "nowhere"],
         "metadata folder not found: nowhere"),
        (["--experiment_name", "w", "--cam_branch", "sigmoid"], "needs a dual-branch model"),
    ]
    for argv, message in cases:
        assert main.main(argv) == 2
        assert message in capsys.readouterr().err


def test_existing_experiment_is_not_overwritten(tmp_path):
    folder = tmp_path / "train_log" / "exp"
    folder.mkdir(parents=True)
    (folder / "last_checkpoint.pth.tar").write_bytes(b"x")
    args = config.get_configs(["--experiment_name", "exp", "--log_root",
                               str(tmp_path / "train_log")])
    with pytest.raises(UserError, match="--override_cache"):
        with Experiment(args):
            pass
    assert (folder / "last_checkpoint.pth.tar").exists()

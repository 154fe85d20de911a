"""The experiment scripts: run_*.sh / run_experiments.py (dry runs, recipes, a
tiny real run), make_tables.py on that run's JSON, and the pictures and the
single-image tool on its checkpoint."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

import config
import main as main_module
from tests.conftest import copy_as_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}",
                                                  os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"scripts_{name}"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run_experiments = load_script("run_experiments")
make_tables = load_script("make_tables")

PAPER_DATASETS = ("ILSVRC", "CUB", "OpenImages", "CARS")
TORCHVISION = {"vgg16": "vgg16-397923af.pth", "resnet50": "resnet50-0676ba61.pth",
               "inception_v3": "inception_v3_google-0cc3c7bd.pth"}
NETWORKS = ("vgg16", "vgg16_gradcam", "resnet50", "inception_v3", "inception_v3_gradcam")


def touch(path) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("x\n")


def fake_layout(root, datasets=PAPER_DATASETS):
    """Dataset folders, metadata files and checkpoint files (contents never read)."""
    for name in datasets:
        os.makedirs(root / "dataset" / name, exist_ok=True)
        for split in ("train", "val", "test"):
            for f in ("image_ids.txt", "class_labels.txt", "image_sizes.txt",
                      "localization.txt"):
                touch(root / "metadata" / name / split / f)
        for network in NETWORKS:
            touch(root / "checkpoints" / f"{name}_{network}_vanilla.pth.tar")
    for arch, filename in TORCHVISION.items():
        touch(root / "torchvision" / filename)


def env_for(root) -> dict:
    env = dict(os.environ)
    env.update(DATA_ROOT=str(root / "dataset"), METADATA_ROOT=str(root / "metadata"),
               LOG_ROOT=str(root / "train_log"), VANILLA_DIR=str(root / "checkpoints"),
               PRETRAINED_DIR=str(root / "torchvision"), PYTHON=sys.executable)
    return env


def plan(argv):
    args = run_experiments.build_parser().parse_args(argv)
    return run_experiments.build_plan(args)


def flag(step, name):
    """The last value of ``name`` in the step's argv (the one argparse keeps)."""
    argv = step.argv
    return [argv[i + 1] for i, a in enumerate(argv) if a == name][-1]


# --------------------------------------------------------------------------
# plans and dry runs
# --------------------------------------------------------------------------

def test_every_planned_command_parses_with_the_published_recipe():
    steps = plan(["--dataset", "ILSVRC", "--vanilla_dir", "ck", "--pretrained_dir", "tv"])
    assert [s.kind for s in steps] == ["finetune", "evaluate"] * 6  # 3 backbones x 2 families
    for step in steps:
        args = config.get_configs(step.argv)
        assert args.data.dataset_name == "ILSVRC" and args.model.model_structure == "b2"
    by_name = {(s.experiment, s.kind): s for s in steps}
    lr = {(arch, m): float(flag(by_name[(f"ILSVRC_{arch}_{m}_b2", "finetune")], "--lr"))
          for arch in ("vgg16", "resnet50", "inception_v3") for m in ("cam", "gradcam")}
    assert lr == {("vgg16", "cam"): 3e-3, ("vgg16", "gradcam"): 1e-4,
                  ("resnet50", "cam"): 1e-4, ("resnet50", "gradcam"): 5e-3,
                  ("inception_v3", "cam"): 5e-4, ("inception_v3", "gradcam"): 5e-4}
    finetune = config.get_configs(by_name[("ILSVRC_resnet50_cam_b2", "finetune")].argv)
    assert (finetune.optim.epochs, finetune.optim.lr_decay_frequency,
            finetune.optim.weight_decay, finetune.optim.batch_size) == (10, 3, 1e-4, 32)
    # only ResNet50 CAM's is large
    assert finetune.model.large_feature_map and finetune.runtime.skip_eval
    assert finetune.model.ft_ckpt == os.path.join("ck", "ILSVRC_resnet50_vanilla.pth.tar")
    assert finetune.model.unfreeze == ("fc2",) and finetune.model.network == "resnet50"
    grad = config.get_configs(by_name[("ILSVRC_resnet50_gradcam_b2", "finetune")].argv)
    assert not grad.model.large_feature_map and grad.model.network == "resnet50"
    # The Grad-CAM rows train the public code's Grad-CAM networks; ILSVRC's
    # Grad-CAM VGG16 starts from torchvision's ImageNet VGG16 itself.
    vgg_grad = config.get_configs(by_name[("ILSVRC_vgg16_gradcam_b2", "finetune")].argv)
    assert vgg_grad.model.network == "vgg16_gradcam"
    assert vgg_grad.model.ft_ckpt == os.path.join("tv", "vgg16-397923af.pth")
    inception = config.get_configs(by_name[("ILSVRC_inception_v3_gradcam_b2",
                                            "finetune")].argv)
    assert inception.model.network == "inception_v3_gradcam"
    assert inception.model.ft_ckpt == os.path.join("ck",
                                                   "ILSVRC_inception_v3_gradcam_vanilla.pth.tar")
    vgg = config.get_configs(by_name[("ILSVRC_vgg16_cam_b2", "finetune")].argv)
    assert vgg.optim.weight_decay == 5e-4 and not vgg.model.large_feature_map
    assert vgg.model.network == "vgg16"
    evaluate = config.get_configs(by_name[("ILSVRC_vgg16_gradcam_b2", "evaluate")].argv)
    assert evaluate.runtime.eval_only and evaluate.cams.branches == ("softmax", "sigmoid")
    assert evaluate.cams.methods == ("gradcam",) and evaluate.evaluation.split == "test"
    assert evaluate.model.network == "vgg16_gradcam" and not evaluate.evaluation.fidelity
    cub = config.get_configs(plan(["--dataset", "CUB", "--architectures", "vgg16",
                                   "--methods", "cam"])[0].argv)
    assert (cub.optim.epochs, cub.optim.lr_decay_frequency, cub.optim.lr) == (50, 15, 5e-5)
    # Table 1 (CUB, Cars): one Grad-CAM fine-tuning scored with every gradient
    # method, with the fidelity metrics.
    cub = plan(["--dataset", "CUB", "--architectures", "vgg16"])
    evaluate = config.get_configs(cub[3].argv)
    assert evaluate.cams.methods == ("gradcam", "gradcam++", "xgradcam", "layercam")
    assert evaluate.evaluation.fidelity and evaluate.model.network == "vgg16_gradcam"
    finetune, evaluate = plan(["--dataset", "OpenImages", "--architectures", "resnet50"])
    # Grad-CAM's published ResNet50 recipe (no large feature map, weight decay
    # 5e-4) serves the unpublished CAM row as well: one fine-tuning scores both.
    assert finetune.experiment == evaluate.experiment == "OpenImages_resnet50_b2"
    finetune, evaluate = config.get_configs(finetune.argv), config.get_configs(evaluate.argv)
    assert finetune.optim.weight_decay == 5e-4 and not finetune.model.large_feature_map
    assert evaluate.cams.methods == ("cam", "gradcam")


def test_cars_trains_its_vanilla_models_first(tmp_path):
    steps = plan(["--dataset", "CARS", "--architectures", "vgg16", "--methods", "cam,gradcam",
                  "--pretrained_dir", str(tmp_path), "--log_root", "logs"])
    assert [s.kind for s in steps] == ["vanilla", "finetune", "evaluate"] * 2
    vanilla = config.get_configs(steps[0].argv)
    assert vanilla.model.model_structure == "vanilla" and vanilla.runtime.skip_eval
    assert vanilla.model.network == "vgg16" and vanilla.optim.epochs == 10
    assert vanilla.optim.lr == 1e-3
    assert vanilla.optim.lr_decay_frequency == 15
    assert vanilla.model.pretrained_path == str(tmp_path / "vgg16-397923af.pth")
    grad_vanilla = config.get_configs(steps[3].argv)
    assert grad_vanilla.model.network == "vgg16_gradcam"
    for vanilla_step, finetune in ((steps[0], steps[1]), (steps[3], steps[4])):
        last = os.path.join("logs", vanilla_step.experiment, "last_checkpoint.pth.tar")
        assert flag(finetune, "--ft_ckpt") == last
    assert config.get_configs(steps[1].argv).optim.epochs == 10
    inception = plan(["--dataset", "CARS", "--architectures", "inception_v3"])
    lrs = [config.get_configs(s.argv).optim.lr for s in inception if s.kind == "vanilla"]
    assert lrs == [5.678e-3, 5e-4]
    # A trained vanilla model given explicitly replaces the training step.
    steps = plan(["--dataset", "CARS", "--architectures", "resnet50", "--methods", "cam",
                  "--vanilla", "resnet50=mine.pth"])
    assert [s.kind for s in steps] == ["finetune", "evaluate"]
    assert flag(steps[0], "--ft_ckpt") == "mine.pth"


def setting(settings, path: str):
    section, name = path.split(".")
    return getattr(getattr(settings, section), name)


def test_synth_recipe_is_the_demo_recipe():
    steps = plan(["--dataset", "SYNTH"])
    assert [s.kind for s in steps] == ["vanilla", "finetune", "evaluate"]
    ours = config.get_configs(steps[0].argv)
    demo = config.get_configs([*main_module.DEMO_COMMON, *main_module.DEMO_VANILLA])
    for key in ("optim.epochs", "optim.lr", "optim.lr_decay_frequency", "optim.weight_decay",
                "optim.lr_classifier_ratio", "data.resize_size", "data.crop_size",
                "model.large_feature_map", "optim.batch_size", "evaluation.cam_curve_interval",
                "model.network"):
        assert setting(ours, key) == setting(demo, key), key
    ours = config.get_configs(steps[1].argv)
    demo = config.get_configs([*main_module.DEMO_COMMON, *main_module.DEMO_B2,
                               "--ft_ckpt", "v.pth"])
    for key in ("optim.epochs", "optim.lr", "optim.lr_decay_frequency", "optim.weight_decay",
                "data.resize_size", "data.crop_size", "model.large_feature_map",
                "evaluation.cam_curve_interval"):
        assert setting(ours, key) == setting(demo, key), key
    assert config.get_configs(steps[2].argv).cams.methods == ("cam", "gradcam")


def test_dry_run_lists_the_learning_rate_of_every_group(capsys):
    assert run_experiments.main(["--dataset", "ILSVRC", "--architectures", "vgg16,resnet50",
                                 "--dry_run"]) == 1  # no data here; the plan still prints
    out = capsys.readouterr().out
    assert "lr fc2: 0.03 x2, 0.003 x3, 0.0003 x3, 3e-05 x2 (epochs)" in out  # VGG16 CAM
    assert "lr classifier_2: 0.001 x2, 0.0001 x3, 1e-05 x3, 1e-06 x2 (epochs)" in out
    assert "lr fc2: 0.005 x2, 0.0005 x3, 5e-05 x3, 5e-06 x2 (epochs)" in out  # ResNet50 Grad


def test_extra_flags_come_last_and_override_the_recipe():
    steps = plan(["--dataset", "CUB", "--architectures", "vgg16", "--methods", "cam",
                  "--save_overlays", "4", "--plots", "--gpus", "1"])
    assert "--save_overlays" in steps[1].argv and "--save_overlays" not in steps[0].argv
    status = run_experiments.main(["--dataset", "CUB", "--architectures", "vgg16",
                                   "--methods", "cam", "--vanilla_dir", "/no/such/dir",
                                   "--dry_run", "--", "--epochs", "2",
                                   "--wandb", "offline"])
    assert status == 1  # the default paths do not exist here; the flags parsed
    args = run_experiments.build_parser().parse_args(["--dataset", "CUB", "--architectures",
                                                      "vgg16", "--methods", "cam"])
    steps = run_experiments.build_plan(args, ["--epochs", "2", "--wandb", "offline"])
    parsed = config.get_configs(steps[0].argv)
    assert parsed.optim.epochs == 2 and parsed.runtime.wandb == "offline"


def test_bad_plans_are_reported():
    assert run_experiments.main(["--dataset", "CUB", "--methods", "camm", "--dry_run"]) == 2
    assert run_experiments.main(["--dataset", "CUB", "--vanilla", "vgg16", "--dry_run"]) == 2
    steps = plan(["--dataset", "CUB", "--architectures", "vgg16", "--methods", "cam"])
    steps[0].argv += ["--lr_decay_frequency", "0"]
    steps[1].argv += ["--no_such_flag"]
    problems = run_experiments.check_plan(steps)
    assert any("finetune: main.py rejects the flags: --lr_decay_frequency must be >= 1" in p
               for p in problems)
    assert any("evaluate: main.py rejects the flags" in p and "--no_such_flag" in p
               for p in problems)


def test_run_all_dry_run_passes_on_a_complete_layout(tmp_path):
    fake_layout(tmp_path)
    os.makedirs(tmp_path / "dataset" / "OpenImages", exist_ok=True)  # its masks live here
    result = subprocess.run(["bash", os.path.join(SCRIPTS, "run_all.sh"), "--dry_run"],
                            env=env_for(tmp_path), capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in PAPER_DATASETS:
        assert f"{name}_vgg16_cam_b2: finetune" in result.stdout
        assert f"{name}_inception_v3_gradcam_b2: evaluate" in result.stdout
    assert "CARS_resnet50_vanilla: vanilla" in result.stdout
    assert "CARS_vgg16_gradcam_vanilla: vanilla" in result.stdout
    assert str(tmp_path / "torchvision" / TORCHVISION["resnet50"]) in result.stdout
    assert "dry run: 12 command(s) parse" in result.stdout  # ILSVRC: 6 fine-tunings
    # CUB, OpenImages: the ResNet50 families share one fine-tuning (same recipe).
    assert result.stdout.count("dry run: 10 command(s) parse") == 2
    assert "dry run: 15 command(s) parse" in result.stdout  # CARS: + 5 vanilla trainings
    assert not (tmp_path / "train_log").exists()  # nothing ran


def test_dry_run_names_every_missing_path(tmp_path):
    fake_layout(tmp_path, datasets=("CUB",))
    os.remove(tmp_path / "checkpoints" / "CUB_resnet50_vanilla.pth.tar")
    os.remove(tmp_path / "checkpoints" / "CUB_vgg16_gradcam_vanilla.pth.tar")
    os.remove(tmp_path / "metadata" / "CUB" / "test" / "localization.txt")
    result = subprocess.run(["bash", os.path.join(SCRIPTS, "run_cub.sh"), "--dry_run"],
                            env=env_for(tmp_path), capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 1
    missing_meta = str(tmp_path / "metadata" / "CUB" / "test" / "localization.txt")
    for network in ("resnet50", "vgg16_gradcam"):
        missing_ckpt = str(tmp_path / "checkpoints" / f"CUB_{network}_vanilla.pth.tar")
        assert f"missing vanilla checkpoint: {missing_ckpt}" in result.stderr
    assert f"missing test metadata file: {missing_meta}" in result.stderr
    assert "3 problem(s)" in result.stderr
    # In-process: an absent dataset folder, a CARS backbone without ImageNet weights.
    fake_layout(tmp_path / "b", datasets=("CARS",))
    shutil.rmtree(tmp_path / "b" / "dataset" / "CARS")
    os.remove(tmp_path / "b" / "torchvision" / TORCHVISION["vgg16"])
    steps = plan(["--dataset", "CARS", "--data_root", str(tmp_path / "b" / "dataset"),
                  "--metadata_root", str(tmp_path / "b" / "metadata"),
                  "--pretrained_dir", str(tmp_path / "b" / "torchvision")])
    problems = run_experiments.check_plan(steps)
    assert any(p.startswith(f"missing dataset image folder: {tmp_path / 'b' / 'dataset' / 'CARS'}")
               for p in problems)
    assert any("missing torchvision ImageNet weights" in p and "vgg16" in p for p in problems)
    # The vanilla checkpoints CARS trains are made by earlier steps: not reported.
    assert not any("CARS_resnet50_vanilla" in p for p in problems)


def test_synth_script_dry_run(tmp_path):
    result = subprocess.run(["bash", os.path.join(SCRIPTS, "run_synth.sh"), "--dry_run"],
                            env=env_for(tmp_path), capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr  # SYNTH is generated on the first run
    assert "SYNTH_resnet18_vanilla: vanilla" in result.stdout


def test_step_states_resume_and_skip(tmp_path):
    steps = plan(["--dataset", "CUB", "--architectures", "vgg16", "--methods", "cam",
                  "--log_root", str(tmp_path)])
    finetune, evaluate = steps
    folder = tmp_path / "CUB_vgg16_cam_b2"
    assert run_experiments.step_state(finetune) == ("fresh", [])
    touch(folder / "log.log")
    assert run_experiments.step_state(finetune) == ("override", ["--override_cache"])
    touch(folder / "last_checkpoint.pth.tar")
    assert run_experiments.step_state(finetune) == ("resume", ["--resume"])
    touch(folder / "50_checkpoint.pth.tar")
    assert run_experiments.step_state(finetune) == ("done", [])
    assert run_experiments.step_state(evaluate) == ("fresh", [])
    touch(folder / "results_test.json")
    assert run_experiments.step_state(evaluate) == ("done", [])
    calls = []
    status = run_experiments.execute(steps, lambda argv: calls.append(argv) or 0,
                                     reevaluate=True, out=open(os.devnull, "w"))
    assert status == 0 and len(calls) == 1 and "--eval_only" in calls[0]
    failing = run_experiments.execute(steps, lambda argv: 3, force=True,
                                      out=open(os.devnull, "w"))
    assert failing == 3


# --------------------------------------------------------------------------
# a tiny real run through the run script, then tables, pictures, one image
# --------------------------------------------------------------------------

TINY = ["--resize_size", "40", "--crop_size", "32", "--epochs", "1", "--batch_size", "8",
        "--workers", "0", "--lr", "0.01"]


@pytest.fixture(scope="module")
def tiny_run(tiny_synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    copy_as_dataset(tiny_synth_root, root, "SYNTH")
    for split in ("val", "test"):  # SYNTH keeps its masks as well as its boxes
        shutil.copy(tiny_synth_root / "metadata" / "SYNTH" / split / "localization_masks.txt",
                    root / "metadata" / "SYNTH" / split / "localization_masks.txt")
    argv = ["--dataset", "SYNTH", "--data_root", str(root / "dataset"),
            "--metadata_root", str(root / "metadata"), "--log_root", str(root / "train_log"),
            "--workers", "0", "--save_overlays", "3", "--plots", "--", *TINY]
    calls = []

    def in_process(step_argv):
        calls.append(step_argv)
        return main_module.main(step_argv)

    assert run_experiments.main(argv, runner=in_process) == 0
    return root, argv, calls


def test_tiny_run_trains_fine_tunes_and_scores_both_branches(tiny_run):
    root, argv, calls = tiny_run
    assert len(calls) == 3  # vanilla, then one fine-tuning and evaluation for both methods
    results = json.loads((root / "train_log" / "SYNTH_resnet18_b2" /
                          "results_test.json").read_text())
    assert [(r["method"], r["branch"]) for r in results["rows"]] == [
        ("cam", "softmax"), ("gradcam", "softmax"), ("cam", "sigmoid"), ("gradcam", "sigmoid")]
    assert all(0 <= r["MaxBoxAccV2"] <= 100 and 0 <= r["PxAP"] <= 100
               for r in results["rows"])
    # Run again: every step is found finished and skipped.
    again = []
    assert run_experiments.main(argv, runner=lambda a: again.append(a) or 0) == 0
    assert again == []


def test_make_tables_renders_the_tiny_runs_json(tiny_run, tmp_path, capsys):
    root, _, _ = tiny_run
    experiments = sorted(str(p) for p in (root / "train_log").iterdir())
    assert make_tables.main(["--experiments", *experiments, "--output", str(tmp_path)]) == 0
    markdown = (tmp_path / "results.md").read_text()
    assert "## SYNTH, test split" in markdown
    assert "| ResNet18 | CAM |" in markdown and "| ResNet18 | Grad-CAM |" in markdown
    for column in ("Top-1 Loc vanilla", "GT-known Loc ours", "MaxBoxAccV2 vanilla",
                   "PxAP ours", "Top-1 Cls vanilla"):
        assert column in markdown
    with open(tmp_path / "results.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["dataset"], r["backbone"], r["method"]) for r in records] == [
        ("SYNTH", "resnet18", "cam"), ("SYNTH", "resnet18", "gradcam")]
    results = json.loads((root / "train_log" / "SYNTH_resnet18_b2" /
                          "results_test.json").read_text())
    softmax, sigmoid = [r for r in results["rows"] if r["method"] == "cam"]
    record = records[0]
    assert float(record["MaxBoxAccV2 vanilla"]) == pytest.approx(softmax["MaxBoxAccV2"], abs=1e-4)
    assert float(record["MaxBoxAccV2 ours"]) == pytest.approx(sigmoid["MaxBoxAccV2"], abs=1e-4)
    assert float(record["PxAP delta"]) == pytest.approx(sigmoid["PxAP"] - softmax["PxAP"],
                                                        abs=1e-3)
    assert float(record["Top-1 Cls ours"]) == pytest.approx(
        results["classification"]["Top-1 Cls"], abs=1e-4)
    assert record["ours experiment"] == "SYNTH_resnet18_b2"
    assert "| ResNet18 | CAM |" in capsys.readouterr().out


def test_make_tables_puts_reference_numbers_beside_ours(tmp_path):
    def write(name, dataset, arch, method, softmax, sigmoid, metric="MaxBoxAccV2"):
        folder = tmp_path / "logs" / name
        folder.mkdir(parents=True)
        rows = [{"method": method, "branch": "softmax", "clamp": False, metric: softmax,
                 "Top-1 Loc": softmax - 17},
                {"method": method, "branch": "sigmoid", "clamp": True, metric: sigmoid,
                 "Top-1 Loc": sigmoid - 17}]
        (folder / "results_test.json").write_text(json.dumps(
            {"experiment": name, "dataset": dataset, "architecture": arch,
             "model_structure": "b2", "split": "test",
             "classification": {"Top-1 Cls": 70.0}, "rows": rows}))
        return folder

    write("a", "ILSVRC", "vgg16", "cam", 60.1, 60.4)
    write("b", "OpenImages", "vgg16", "cam", 58.0, 59.9, metric="PxAP")
    out = tmp_path / "tables"
    assert make_tables.main(["--experiments", str(tmp_path / "logs" / "a"),
                             str(tmp_path / "logs" / "b"), "--output", str(out),
                             "--include_references"]) == 0
    markdown = (out / "results.md").read_text()
    # Ours, vanilla, and beside each the published number and our difference to it.
    assert "| 43.10 [43.11, -0.01] | 43.40 (+0.30) [43.13, +0.27] |" in markdown
    assert "60.10 [60.00, +0.10] | 60.40 (+0.30) [60.25, +0.15]" in markdown
    assert "58.00 [58.17, -0.17] | 59.90 (+1.90) [60.16, -0.26]" in markdown
    # The whole of Table 2 and Table 1 is listed, measured or not.
    assert ("| ResNet50 | Grad-CAM | — [69.01] | — [69.01] | — [41.15] | — [40.33] | "
            "— [55.29] | — [53.60] | — [57.03] | — [57.99] |") in markdown
    assert "| ResNet50 | CAM | — [74.02] | — [74.02] | — | — | — [59.36] | — [60.49] |" in markdown
    assert ("| VGG16 | LayerCAM | — | — | — [37.19] | — [41.58] | "
            "— [11.27] | — [19.50] |") in markdown
    assert "| ResNet50 | XGrad-CAM | — [29.53] | — [3.66] | — [14.56] | — [41.41] |" in markdown
    # wsolevaluation's CAM baseline where the paper has none.
    assert "| InceptionV3 | CAM | — [56.70*] |" in markdown
    with open(out / "results.csv") as f:
        records = {(r["dataset"], r["backbone"], r["method"]): r for r in csv.DictReader(f)}
    row = records[("ILSVRC", "vgg16", "cam")]
    assert row["MaxBoxAccV2 ref vanilla"] == "60.0" and row["MaxBoxAccV2 ref source"] == "paper"
    assert records[("ILSVRC", "inception_v3", "cam")]["MaxBoxAccV2 ref source"] == "paper"
    assert records[("CUB", "inception_v3", "cam")]["MaxBoxAccV2 ref source"] == \
        "wsolevaluation"
    assert make_tables.main(["--experiments", str(tmp_path / "nothing"),
                             "--output", str(out)]) == 2
    # Grad-CAM scored on the CAM network is not the paper's Grad-CAM row.
    write("c", "ILSVRC", "vgg16", "gradcam", 52.0, 59.0)
    assert make_tables.main(["--experiments", str(tmp_path / "logs" / "c"),
                             "--output", str(out)]) == 0
    assert "| VGG16 (vgg16 network) | Grad-CAM | 70.00 | 70.00 (+0.00) |" in \
        (out / "results.md").read_text()


def test_evaluation_wrote_overlays_grids_and_curves(tiny_run):
    root, _, _ = tiny_run
    folder = root / "train_log" / "SYNTH_resnet18_b2"
    for branch in ("softmax", "sigmoid"):
        pngs = sorted(os.listdir(folder / "overlays" / "test" / f"gradcam_{branch}"))
        assert len(pngs) == 3 and pngs[0].startswith("00_")
    assert (folder / "overlays" / "test" / "grid_gradcam.png").is_file()
    assert {"box_accuracy_gradcam.png", "pxap_pr_gradcam.png"} <= set(
        os.listdir(folder / "plots" / "test"))


def test_mask_dataset_overlays_show_mask_contours(tiny_run, tmp_path, monkeypatch):
    """Re-score the tiny checkpoint on the OpenImages layout: PxAP only, contours."""
    root, _, _ = tiny_run
    source = root / "train_log" / "SYNTH_resnet18_b2"
    copy_as_dataset(root, tmp_path, "OpenImages")
    (tmp_path / "train_log" / "oi").mkdir(parents=True)
    shutil.copy(source / "last_checkpoint.pth.tar", tmp_path / "train_log" / "oi")
    monkeypatch.chdir(tmp_path)
    argv = ["--experiment_name", "oi", "--dataset_name", "OpenImages", "--num_classes", "10",
            "--architecture", "resnet18", "--model_structure", "b2", "--eval_only",
            "--cam_branch", "softmax,sigmoid", "--method", "cam", "--save_overlays", "2",
            "--cam_curve_interval", "0.01", *TINY]
    assert main_module.main(argv) == 0
    grid = tmp_path / "train_log" / "oi" / "overlays" / "test" / "grid_cam.png"
    assert grid.is_file()
    assert len(os.listdir(grid.parent / "cam_sigmoid")) == 2


def test_single_image_overlay_from_either_branch(tiny_run, tmp_path, capsys):
    import explain as single_image
    root, _, _ = tiny_run
    ckpt = root / "train_log" / "SYNTH_resnet18_b2" / "last_checkpoint.pth.tar"
    image = next((root / "dataset" / "SYNTH" / "test").rglob("*.png"))
    out = tmp_path / "photo.png"
    assert single_image.main(["--ckpt", str(ckpt), "--image", str(image), "--method",
                              "gradcam", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "explained class" in printed and str(out) in printed
    import cv2
    both = cv2.imread(str(out))
    assert both is not None and both.shape[1] > 3 * 256  # image + softmax + sigmoid panels
    assert single_image.main(["--ckpt", str(ckpt), "--image", str(image), "--branch",
                              "sigmoid", "--target", "0", "--output", str(tmp_path / "s.png")]) == 0
    one = cv2.imread(str(tmp_path / "s.png"))
    assert one.shape[1] < both.shape[1]
    vanilla = root / "train_log" / "SYNTH_resnet18_vanilla" / "last_checkpoint.pth.tar"
    assert single_image.main(["--ckpt", str(vanilla), "--image", str(image), "--branch",
                              "sigmoid"]) == 2
    assert "no sigmoid branch" in capsys.readouterr().err
    assert single_image.main(["--ckpt", str(ckpt), "--image", str(tmp_path / "none.jpg")]) == 2
    assert single_image.main(["--ckpt", str(ckpt), "--image", str(image),
                              "--target", "no-such-class"]) == 2


def test_explain_py_is_the_single_image_command(tiny_run, tmp_path):
    root, _, _ = tiny_run
    ckpt = root / "train_log" / "SYNTH_resnet18_b2" / "last_checkpoint.pth.tar"
    image = next((root / "dataset" / "SYNTH" / "test").rglob("*.png"))
    jpeg = tmp_path / (image.stem + ".jpg")  # same stem, another format
    import cv2
    cv2.imwrite(str(jpeg), cv2.imread(str(image)))
    result = subprocess.run([sys.executable, os.path.join(REPO, "explain.py"), "--ckpt",
                             str(ckpt), "--image", str(image), str(jpeg), "--method", "cam"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    written = sorted(p for p in os.listdir(tmp_path) if p.endswith("_cam.png"))
    # One picture per input: photo.png and photo.jpg do not overwrite each other.
    assert written == [f"{image.stem}.jpg_cam.png", f"{image.name}_cam.png"]


def test_bench_throughput_runs_small_and_reports_every_ratio(tmp_path, capsys):
    bench = load_script("bench_throughput")
    out = tmp_path / "figures.json"
    rows = bench.main(["--archs", "resnet18", "--image_size", "32", "--batch_size", "4",
                       "--steps", "2", "--rounds", "2", "--warmup", "1", "--num_classes", "10",
                       "--workers", "0", "--disk_image_size", "48x40", "--device", "cpu",
                       "--cam_branch", "softmax,sigmoid", "--json", str(out)])
    (row,) = rows
    for source in ("memory", "disk"):
        for key in ("forward", "fwd+bwd", f"fine-tune ({source})", f"evaluate ({source})"):
            assert 0 < row[key] < float("inf"), key
        assert row[f"fine-tune / forward ({source})"] == pytest.approx(
            row[f"fine-tune ({source})"] / row["forward"])
        assert row[f"evaluate / fwd+bwd ({source})"] == pytest.approx(
            row[f"evaluate ({source})"] / row["fwd+bwd"])
    printed = capsys.readouterr().out
    assert "x forward (goal 0.90)" in printed and "x fwd+bwd (goal 0.70)" in printed
    saved = json.loads(out.read_text())
    assert saved["results"][0]["architecture"] == "resnet18" and saved["amp"] is False
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", "cloud"])


@pytest.mark.parametrize("script,args,expected", [
    ("bench_eval.py", ["--num_maps", "12", "--groups", "blobs,rings,upsampled",
                       "--cam_curve_interval", "0.01", "--repeats", "1", "--ref_repeats", "1"],
     "identical counts (both curves at every CAM and IoU threshold, GT-known and Top-1 "
     "Loc): yes"),
    ("bench_cams.py", ["--archs", "resnet18", "--batch_size", "2", "--size", "32",
                       "--num_classes", "10", "--repeats", "1", "--warmup", "0",
                       "--perturbation", "--perturbation_samples", "1", "--libraries"],
     "weight/gradient methods): "),
])
def test_the_other_benchmarks_run_small(script, args, expected):
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout


def test_bench_eval_scores_a_trained_models_maps_like_wsolevaluation(tiny_synth_root, tmp_path,
                                                                     capsys):
    """The 'trained' group: CAMs of a (briefly) trained SYNTH model with the
    images' real boxes; every count equals wsolevaluation's algorithm's."""
    from scripts import bench_eval
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    main_module.run(config.get_configs([
        "--dataset_name", "SYNTH", "--architecture", "resnet18", "--root", str(tmp_path / "runs"),
        "--experiment_name", "v", "--data_root", str(tmp_path / "dataset"),
        "--metadata_root", str(tmp_path / "metadata"), "--resize_size", "40", "--crop_size",
        "32", "--batch_size", "8", "--workers", "0", "--epochs", "1", "--lr", "0.01",
        "--skip_eval"]))
    code = bench_eval.main([
        "--groups", "trained", "--num_maps", "12", "--cam_curve_interval", "0.01",
        "--repeats", "1", "--box_threads", "1", "--checkpoint",
        str(tmp_path / "runs" / "v" / "last_checkpoint.pth.tar"),
        "--data_root", str(tmp_path / "dataset"), "--metadata_root", str(tmp_path / "metadata")])
    out = capsys.readouterr().out
    assert code == 0, out
    images = len(open(tmp_path / "metadata" / "SYNTH" / "test" / "image_ids.txt").readlines())
    assert f"maps: {min(12, 2 * images)} (224x224; trained {min(12, 2 * images)})" in out
    assert "Loc): yes" in out


def test_make_tables_keeps_runs_of_other_protocols_apart(tmp_path, capsys):
    """A --replay public_code run and a default run of one network are two rows."""
    def write(name, choices, replay, value):
        folder = tmp_path / "logs" / name
        folder.mkdir(parents=True)
        rows = [{"method": "cam", "branch": b, "clamp": b == "sigmoid",
                 "MaxBoxAccV2": value + (b == "sigmoid")} for b in ("softmax", "sigmoid")]
        (folder / "results_test.json").write_text(json.dumps(
            {"experiment": name, "dataset": "CUB", "architecture": "vgg16", "split": "test",
             "replay": replay, "choices": choices, "classification": {"Top-1 Cls": 70.0},
             "rows": rows}))

    from wsol.replay import REPLAYS
    write("ours", REPLAYS["none"].as_dict(), "none", 60.0)
    write("replayed", REPLAYS["public_code"].as_dict(), "public_code", 50.0)
    write("first_box", {**REPLAYS["none"].as_dict(), "first_box_only": True, "seed": 7},
          "none", 40.0)
    assert make_tables.main(["--experiments", *(str(p) for p in (tmp_path / "logs").iterdir()),
                             "--output", str(tmp_path / "t")]) == 0
    markdown = (tmp_path / "t" / "results.md").read_text()
    for label, value in (("CAM", 60), ("CAM [replay public_code]", 50),
                         ("CAM [first_box_only True]", 40)):
        assert f"| VGG16 | {label} | 70.00 | 70.00 (+0.00) | {value}.00 [63.70*, " \
               f"{value - 63.7:+.2f}] | {value + 1}.00 (+1.00) |" in markdown
    assert "warning" not in capsys.readouterr().err  # no cell was contested
    with open(tmp_path / "t" / "results.csv") as f:
        assert sorted(r["protocol"] for r in csv.DictReader(f)) == [
            "", "first_box_only True", "replay public_code"]


def test_make_tables_shows_our_intervals_and_whether_published_numbers_lie_in_them(
        tmp_path):
    folder = tmp_path / "logs" / "a"
    folder.mkdir(parents=True)
    rows = [{"method": "cam", "branch": "softmax", "clamp": False, "MaxBoxAccV2": 60.1,
             "ci95": {"MaxBoxAccV2": [58.9, 61.3]}},
            {"method": "cam", "branch": "sigmoid", "clamp": True, "MaxBoxAccV2": 62.4,
             "ci95": {"MaxBoxAccV2": [61.0, 63.7]}}]
    (folder / "results_test.json").write_text(json.dumps(
        {"experiment": "a", "dataset": "ILSVRC", "architecture": "vgg16", "split": "test",
         "classification": {"Top-1 Cls": 66.0}, "rows": rows}))
    assert make_tables.main(["--experiments", str(folder), "--output", str(tmp_path / "t")]) == 0
    markdown = (tmp_path / "t" / "results.md").read_text()
    # Published: 60.00 (vanilla) and 60.25 (ours), Table 2.
    assert "60.10 {58.90-61.30} [60.00, +0.10, in]" in markdown
    assert "62.40 {61.00-63.70} (+2.30) [60.25, +2.15, out]" in markdown
    with open(tmp_path / "t" / "results.csv") as f:
        record = next(csv.DictReader(f))
    assert (record["MaxBoxAccV2 ours lo"], record["MaxBoxAccV2 ours hi"]) == ("61.0", "63.7")
    assert record["MaxBoxAccV2 ref vanilla inside"] == "True"
    assert record["MaxBoxAccV2 ref ours inside"] == "False"


# -- wsolevaluation's WSOL methods ---------------------------------------------------------
def test_wsol_methods_script_plans_each_method_vanilla_and_b2(tmp_path):
    fake_layout(tmp_path)
    done = subprocess.run(["bash", os.path.join(SCRIPTS, "run_wsol_methods.sh"), "CUB",
                           "--architectures", "resnet50", "--dry_run"],
                          env=env_for(tmp_path), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    # cam uses the released vanilla checkpoint; has and cutmix train their own.
    assert "CUB_resnet50_has_vanilla: vanilla  # not published: lr 1e-3 stands in" in out
    assert "CUB_resnet50_cutmix_vanilla: vanilla" in out
    assert "CUB_resnet50_vanilla: vanilla" not in out
    # ACoL, SPG, ADL: their own networks, trained and fine-tuned with the method.
    for method in ("acol", "spg", "adl"):
        assert f"CUB_resnet50_{method}_vanilla: vanilla  # not published" in out
        assert out.count(f"CUB_resnet50_cam_{method}_b2: finetune") == 1
    steps = plan(["--dataset", "CUB", "--architectures", "resnet50", "--wsol_method", "has",
                  "--data_root", str(tmp_path / "dataset")])
    assert [s.kind for s in steps] == ["vanilla", "finetune", "evaluate"]
    assert all(flag(s, "--wsol_method") == "has" for s in steps)
    assert steps[1].inputs == [os.path.join("train_log", "CUB_resnet50_has_vanilla",
                                            "last_checkpoint.pth.tar")]



def test_synth_resnet50_methods_start_from_one_synth_pretrain():
    """SYNTH has no ImageNet weights: its ResNet50 networks start, as wsolevaluation's
    start from ImageNet's, from one plain ResNet50 trained on SYNTH, planned once."""
    steps = []
    for method in ("cam", "acol"):
        steps += plan(["--dataset", "SYNTH", "--architectures", "resnet50",
                       "--wsol_method", method])
    kinds = [(s.experiment, s.kind) for s in steps]
    assert kinds[:2] == [("SYNTH_resnet50_pretrain", "pretrain"),
                         ("SYNTH_resnet50_vanilla", "vanilla")]
    assert kinds[4:6] == [("SYNTH_resnet50_pretrain", "pretrain"),
                          ("SYNTH_resnet50_acol_vanilla", "vanilla")]
    pretrain = config.get_configs(steps[0].argv)
    assert pretrain.model.network == "resnet50" and "--wsol_method" not in steps[0].argv
    assert "--pretrained_path" not in steps[0].argv  # from scratch
    assert (pretrain.optim.lr, pretrain.optim.epochs) == (0.05, 3)
    checkpoint = os.path.join("train_log", "SYNTH_resnet50_pretrain", "last_checkpoint.pth.tar")
    for vanilla in (steps[1], steps[5]):
        settings = config.get_configs(vanilla.argv)
        assert settings.model.pretrained_path == checkpoint and vanilla.inputs == [checkpoint]
        assert (settings.optim.lr, settings.optim.epochs) == (0.002, 2)
    assert config.get_configs(steps[5].argv).model.network == "resnet50_acol"
    # A given --pretrained file replaces the pretraining step; ResNet18 stays from scratch.
    steps = plan(["--dataset", "SYNTH", "--architectures", "resnet50",
                  "--pretrained", "resnet50=mine.pth"])
    assert [s.kind for s in steps] == ["vanilla", "finetune", "evaluate"]
    assert flag(steps[0], "--pretrained_path") == "mine.pth"
    steps = plan(["--dataset", "SYNTH"])
    assert "--pretrained_path" not in steps[0].argv

def test_wsol_table_beside_wsolevaluations_numbers(tmp_path):
    assert make_tables.wsol_published("CUB", "resnet50", "has") == 64.7
    assert make_tables.wsol_published("OpenImages", "inception_v3", "cam") == 63.2
    assert make_tables.wsol_published("CARS", "resnet50", "cam") is None
    rows = [{"method": "cam", "branch": "softmax", "MaxBoxAccV2": 60.0},
            {"method": "cam", "branch": "sigmoid", "MaxBoxAccV2": 62.5}]
    path = tmp_path / "results_test.json"
    path.write_text(json.dumps({"rows": rows, "dataset": "CUB", "architecture": "resnet50",
                                "wsol_method": "cutmix"}))
    table = make_tables.wsol_table([str(path)])
    assert "| CUB | ResNet50 | cutmix | MaxBoxAccV2 | 62.8 | 60.00 | 62.50 | +2.50 |" in table
    paired = [{"metric": "MaxBoxAccV2", "a": {"method": "cam", "branch": "sigmoid"},
               "b": {"method": "cam", "branch": "softmax"}, "diff": 2.5, "ci95": [0.5, 4.25],
               "p": 0.012}]
    path.write_text(json.dumps({"rows": rows, "dataset": "CUB", "architecture": "resnet50",
                                "wsol_method": "cutmix", "paired": paired}))
    assert "| +2.50 (+0.50 to +4.25) p=0.012 |" in make_tables.wsol_table([str(path)])
    # In the main tables another WSOL method is another row, never a conflict with CAM's.
    assert make_tables.protocol_of({"wsol_method": "cutmix"}) == "wsol_method cutmix"

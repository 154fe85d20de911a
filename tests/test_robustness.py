"""Runs that survive: resume, bad input, torchrun."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import config
import main
from tests.conftest import copy_as_dataset, synth_argv
from wsol.pipeline import evaluate_run
from wsol.runtime.build import build_model
from wsol.runtime.checkpoint import load_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def workspace(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    return tmp_path


def tiny_argv(root, name, *extra):
    return synth_argv(root, name, "--resize_size", "40", "--crop_size", "32", "--method", "cam",
                      "--lr", "0.05", *extra)


def test_resume_reaches_the_same_weights_bit_for_bit(workspace):
    run = lambda *a: main.run(config.get_configs(tiny_argv(workspace, *a, "--skip_eval")))  # noqa
    run("full", "--epochs", "2", "--lr_decay_frequency", "1")
    run("cut", "--epochs", "1", "--lr_decay_frequency", "1")
    run("cut", "--epochs", "2", "--lr_decay_frequency", "1", "--resume")
    full = load_checkpoint_file(str(workspace / "train_log/full/last_checkpoint.pth.tar"))
    cut = load_checkpoint_file(str(workspace / "train_log/cut/last_checkpoint.pth.tar"))
    assert cut["epoch"] == full["epoch"] == 2
    for key, value in full["state_dict"].items():
        assert torch.equal(value, cut["state_dict"][key]), key
    assert cut["scheduler"]["last_epoch"] == full["scheduler"]["last_epoch"]


def test_resume_without_a_checkpoint_is_refused(workspace, capsys):
    code = main.main(tiny_argv(workspace, "never", "--epochs", "2", "--resume"))
    assert code == 2 and "holds no checkpoint to resume from" in capsys.readouterr().err


def _edit(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


@pytest.mark.parametrize("file,edit,message", [
    ("class_labels.txt", lambda ls: [ls[0] + ",7"] + ls[1:], "class_labels.txt:1: expected 2"),
    ("class_labels.txt", lambda ls: [ls[0].split(",")[0] + ",bird"] + ls[1:],
     "'bird' is not a valid int"),
    ("class_labels.txt", lambda ls: [ls[0].split(",")[0] + ",10"] + ls[1:],
     "is >= the number of classes (10)"),
    ("class_labels.txt", lambda ls: ls[1:], "missing 1 image id(s) of image_ids.txt, first"),
    ("localization.txt", lambda ls: [ls[0].split(",")[0] + ",30,5,10,20"] + ls[1:],
     "x1 < x0"),
    ("localization.txt", lambda ls: [ls[0].split(",")[0] + ",0,0,500,10"] + ls[1:],
     "lies outside the image"),
])
def test_bad_metadata_names_file_and_line(workspace, capsys, file, edit, message):
    _edit(workspace / "metadata" / "SYNTH" / "test" / file, edit)
    code = main.main(tiny_argv(workspace, "bad", "--epochs", "0"))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (workspace / "train_log" / "bad" / "results_test.json").exists()


def test_missing_image_folder_is_named(workspace, capsys):
    code = main.main([*tiny_argv(workspace, "noroot", "--epochs", "0"), "--data_root",
                      str(workspace / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "image folder not found" in err and "--data_root" in err
    # The failed run leaves nothing behind, so the corrected rerun is not refused.
    assert not (workspace / "train_log" / "noroot").exists()


def test_truncated_image_fails_or_is_skipped_and_counted(workspace, capsys):
    ids = (workspace / "metadata/SYNTH/test/image_ids.txt").read_text().split()
    broken = workspace / "dataset" / "SYNTH" / ids[0]
    broken.write_bytes(broken.read_bytes()[:40])
    assert main.main(tiny_argv(workspace, "fail", "--epochs", "0")) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and ids[0] in err
    results = main.run(config.get_configs(tiny_argv(workspace, "skip", "--epochs", "0",
                                                    "--skip_bad_images")))
    assert results["num_skipped_images"] == 1
    assert results["num_images"] == len(ids) - 1


def test_eval_only_with_a_checkpoint_of_another_architecture(workspace, capsys):
    main.run(config.get_configs(tiny_argv(workspace, "r18", "--epochs", "0", "--skip_eval")))
    code = main.main([*tiny_argv(workspace, "r18", "--eval_only"), "--architecture", "resnet50"])
    err = capsys.readouterr().err
    assert code == 2 and ("was trained with --architecture resnet18, not resnet50: drop "
                          "--architecture") in err


def test_unknown_method_is_named(workspace, capsys):
    code = main.main(tiny_argv(workspace, "m", "--epochs", "0", "--method", "cam,gradcamm"))
    assert code == 2 and "gradcamm" in capsys.readouterr().err


def _torchrun(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", os.path.join(REPO, "main.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_two_processes_train_and_evaluate_like_one(workspace):
    fidelity = ["--fidelity", "--fidelity_steps", "2", "--fidelity_road"]
    base = tiny_argv(workspace, "single", "--epochs", "0", "--method", "cam,gradcam", *fidelity)
    single = main.run(config.get_configs(base))
    ckpt = workspace / "train_log" / "single" / "last_checkpoint.pth.tar"
    # Evaluation of the same checkpoint: every image once, counts reduced -> identical.
    os.makedirs(workspace / "train_log" / "ddp_eval")
    shutil.copy(ckpt, workspace / "train_log" / "ddp_eval" / "last_checkpoint.pth.tar")
    done = _torchrun(tiny_argv(workspace, "ddp_eval", "--eval_only", "--method", "cam,gradcam",
                               *fidelity), workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((workspace / "train_log/ddp_eval/results_test.json").read_text())
    assert ddp["num_images"] == single["num_images"]
    assert ddp["classification"] == single["classification"]
    assert ddp["bootstrap"] == single["bootstrap"] == {"resamples": 1000, "seed": 0}
    for a, b in zip(ddp["rows"], single["rows"]):
        for key in ("MaxBoxAccV2", "MaxBoxAcc", "GT-known Loc", "Top-1 Loc"):
            assert a[key] == b[key], key
            # The images' own contributions, gathered across ranks: the same
            # resamples give the same intervals as one process.
            assert a["ci95"][key] == b["ci95"][key], key
        assert a["ci95"]["Top-1 Cls"] == b["ci95"]["Top-1 Cls"]
        # Each rank batches other images, and a network's outputs depend on the
        # batch in the last bits; PxAP's 1,000 float thresholds see that (README,
        # Multi-GPU), the 256 levels of the box metrics did not here.
        assert a["PxAP"] == pytest.approx(b["PxAP"], abs=0.01), (a["PxAP"], b["PxAP"])
        # Fidelity sums are added up across ranks too (from the same slightly
        # batch-dependent outputs, summed in another order).
        assert a["num_images"] == b["num_images"] == single["num_images"]
        for key in ("Average Drop", "Increase in Confidence", "Insertion AUC", "Deletion AUC"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), key
            assert a["ci95"][key] == pytest.approx(b["ci95"][key], rel=1e-5, abs=1e-9), key
        # ROAD's imputation noise is seeded per image, not per batch or rank; but a
        # map's last-bit difference can move a pixel across a percentile, and its
        # differences of probabilities are small numbers.
        for key in ("ROAD MoRF", "ROAD LeRF", "ROAD"):
            assert a[key] == pytest.approx(b[key], rel=2e-3, abs=5e-6), key
            assert a["ci95"][key] == pytest.approx(b["ci95"][key], rel=2e-3, abs=5e-6), key
        assert a["ci95"]["PxAP"] == pytest.approx(b["ci95"]["PxAP"], abs=0.05)
        assert 0 <= b["Insertion AUC"] <= 1 and 0 <= b["Deletion AUC"] <= 1
    # One epoch of training under torchrun (gloo) writes one checkpoint from rank 0.
    done = _torchrun(tiny_argv(workspace, "ddp_train", "--epochs", "1"), workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = load_checkpoint_file(str(workspace / "train_log/ddp_train/last_checkpoint.pth.tar"))
    assert trained["epoch"] == 1
    assert all(torch.isfinite(v.float()).all() for v in trained["state_dict"].values())
    assert os.path.exists(workspace / "train_log/ddp_train/results_test.json")


def test_nan_maps_are_counted_as_nan_not_as_constant(workspace):
    args = config.get_configs(tiny_argv(workspace, "nan", "--epochs", "0",
                                        "--method", "cam,gradcam"))
    model, spec = build_model(args)
    with torch.no_grad():
        model.head_module.weight[0] = float("nan")  # every map explaining class 0 is NaN
    results = evaluate_run(args, model, spec, torch.device("cpu"))
    labels = (workspace / "metadata/SYNTH/test/class_labels.txt").read_text().split()
    class0 = sum(line.split(",")[1] == "0" for line in labels)
    assert class0 > 0
    cam, gradcam = results["rows"]
    assert cam["num_nan_maps"] == class0
    assert cam["num_constant_maps"] <= results["num_images"] - class0
    # The head's backward multiplies by every class weight (0 * NaN = NaN), so
    # every Grad-CAM map is NaN, and counted so.
    assert gradcam["num_nan_maps"] == results["num_images"]
    assert gradcam["num_constant_maps"] == 0


def test_resume_continues_the_run_as_its_config_records_it(workspace, capsys):
    run = lambda *a: main.run(config.get_configs(tiny_argv(workspace, *a, "--skip_eval")))  # noqa
    run("as_recorded", "--epochs", "1", "--lr", "0.02", "--weight_decay", "5e-4",
        "--lr_decay_frequency", "1")
    # The bare command continues with the recorded settings, not the defaults.
    settings = config.get_configs(synth_argv(workspace, "as_recorded", "--resume", "--epochs",
                                             "2", "--skip_eval"))
    assert (settings.optim.lr, settings.optim.weight_decay,
            settings.optim.lr_decay_frequency, settings.optim.epochs) == (0.02, 5e-4, 1, 2)
    assert (settings.data.crop_size, settings.model.network) == (32, "resnet18")
    assert any("--resume: " in note and "optim.lr" in note for note in settings.notes)
    main.run(settings)
    assert load_checkpoint_file(str(workspace / "train_log/as_recorded/last_checkpoint.pth.tar")
                                )["epoch"] == 2
    # An explicit flag that would train another run is refused, naming both values.
    code = main.main(synth_argv(workspace, "as_recorded", "--resume", "--lr", "0.1"))
    err = capsys.readouterr().err
    assert code == 2 and "trained with optim.lr 0.02, not 0.1 (--lr)" in err

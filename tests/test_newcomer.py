"""What a newcomer hits: --eval_only that trusts its checkpoint, errors before
work, wandb that cannot stall, and the record of how a run was made."""
from __future__ import annotations

import json
import logging
import os
import pty
import select
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import config
import main
from tests.conftest import copy_as_dataset, synth_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workspace(tiny_synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("newcomer")
    copy_as_dataset(tiny_synth_root, root, "SYNTH")
    return root


def argv(root, name, *extra):
    return synth_argv(root, name, "--root", str(root / "runs"), *extra)


def test_eval_only_rebuilds_the_model_and_sizes_from_the_checkpoint(workspace, capsys):
    sizes = ["--resize_size", "40", "--crop_size", "32", "--large_feature_map", "TRUE"]
    vanilla = main.run(config.get_configs(argv(workspace, "v", "--epochs", "1", "--lr", "0.005",
                                               *sizes)))
    ckpt = workspace / "runs" / "v" / "last_checkpoint.pth.tar"
    trained = main.run(config.get_configs(argv(workspace, "b", "--epochs", "1", "--lr", "0.01",
                                               "--ft_ckpt", str(ckpt), *sizes)))
    # Evaluated again without repeating the sizes, the structure or the feature map.
    again = main.run(config.get_configs(argv(workspace, "b", "--eval_only")))
    assert again["classification"] == trained["classification"]
    assert again["rows"][0]["MaxBoxAccV2"] == trained["rows"][0]["MaxBoxAccV2"]
    assert {r["branch"] for r in again["rows"]} == {"sigmoid"}  # b2, read from the checkpoint
    assert vanilla["classification"]["Top-1 Cls"] == trained["classification"]["Top-1 Cls"]
    # A flag that contradicts the checkpoint is an error naming both values.
    for flags, message in ((["--crop_size", "64"], "trained with --crop_size 32, not 64"),
                           (["--model_structure", "vanilla"],
                            "trained with --model_structure b2, not vanilla"),
                           (["--large_feature_map", "FALSE"],
                            "trained with --large_feature_map TRUE, not FALSE")):
        assert main.main(argv(workspace, "b", "--eval_only", *flags)) == 2
        assert message in capsys.readouterr().err
    # Results of other settings do not overwrite each other.
    folder = workspace / "runs" / "b"
    main.run(config.get_configs(argv(workspace, "b", "--eval_only", "--method", "gradcam")))
    files = sorted(p for p in os.listdir(folder) if p.startswith("results_test"))
    assert len(files) == 2 and "results_test.json" in files
    first = json.loads((folder / "results_test.json").read_text())
    assert [r["method"] for r in first["rows"]] == ["cam", "gradcam"]  # kept
    other = json.loads((folder / [f for f in files if f != "results_test.json"][0]).read_text())
    assert [r["method"] for r in other["rows"]] == ["gradcam"]


def test_errors_are_found_before_any_work(workspace, capsys, tmp_path):
    # A typo in --method: before the experiment folder exists.
    assert main.main(argv(workspace, "typo", "--epochs", "5", "--method", "cam,gradcamm")) == 2
    assert "unknown CAM method 'gradcamm'" in capsys.readouterr().err
    assert not (workspace / "runs" / "typo").exists()
    # Missing test metadata: found before training, nothing left behind.
    broken = tmp_path / "metadata"
    import shutil
    shutil.copytree(workspace / "metadata", broken)
    os.remove(broken / "SYNTH" / "test" / "image_sizes.txt")
    start = time.perf_counter()
    assert main.main([*argv(workspace, "late", "--epochs", "50"), "--metadata_root",
                      str(broken)]) == 2
    err = capsys.readouterr().err
    assert "image_sizes.txt" in err and "training" not in err
    assert time.perf_counter() - start < 30  # no 50 epochs first
    assert not (workspace / "runs" / "late").exists()
    # cam where it is not defined: refused before training.
    pytest.importorskip("timm")
    assert main.main(argv(workspace, "vit", "--architecture", "vit", "--crop_size", "32",
                          "--resize_size", "40", "--epochs", "3", "--method", "cam")) == 2
    assert "cam is not defined" in capsys.readouterr().err
    assert not (workspace / "runs" / "vit").exists()


def test_a_checkpoint_of_another_architecture_names_it(workspace, capsys):
    main.run(config.get_configs(argv(workspace, "r18", "--epochs", "0", "--skip_eval",
                                     "--resize_size", "40", "--crop_size", "32")))
    ckpt = workspace / "runs" / "r18" / "last_checkpoint.pth.tar"
    assert main.main(argv(workspace, "mobile", "--architecture", "mobilenet_v2",
                          "--ft_ckpt", str(ckpt), "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "it is a resnet18 checkpoint: pass --architecture resnet18" in err
    assert len(err) < 600


def test_results_and_config_record_how_the_run_was_made(workspace):
    results = main.run(config.get_configs(argv(workspace, "rec", "--epochs", "0", "--seed",
                                               "7", "--resize_size", "40", "--crop_size",
                                               "32")))
    saved = json.loads((workspace / "runs" / "rec" / "config.json").read_text())
    for record in (results["run"], saved["run"]):
        assert record["command"].startswith("main.py --experiment_name rec")
        assert record["seed"] == 7 and record["date"].startswith("20")
        assert set(record["versions"]) >= {"python", "torch", "torchvision", "numpy", "opencv"}
        assert record["versions"]["torch"] == torch.__version__
        assert len(record["git_commit"]) == 40 and isinstance(record["git_dirty"], bool)
    assert results["run"]["device"].startswith("cpu")


FAKE_WANDB = '''
import json, os, sys

class Settings:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

class _Run:
    def __init__(self, directory):
        self.dir = os.path.join(directory, "wandb", "offline-run-1", "files")
        os.makedirs(self.dir, exist_ok=True)
        self.logged = {}
    def log(self, values, step=None):
        self.logged.update(values)
    def finish(self):
        with open(os.environ["FAKE_WANDB_RECORD"], "a") as f:
            f.write(json.dumps(sorted(self.logged)) + "\\n")

def init(project=None, name=None, config=None, dir=None, mode=None, settings=None):
    with open(os.environ["FAKE_WANDB_RECORD"], "a") as f:
        f.write(json.dumps({"mode": mode, "dir": dir}) + "\\n")
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        # What wandb does without a key on a terminal: ask, and wait.
        input("wandb: Enter your choice: ")
    return _Run(dir)
'''


def test_wandb_without_a_key_never_waits_at_a_prompt(workspace, tmp_path):
    fake = tmp_path / "fake"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text(textwrap.dedent(FAKE_WANDB))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # a reachable "wandb server"
    record = tmp_path / "record.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{REPO}",
           "WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}",
           "WANDB_DIR": str(tmp_path / "wandb_dir"), "HOME": str(tmp_path),
           "FAKE_WANDB_RECORD": str(record)}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    os.makedirs(env["WANDB_DIR"])
    leader, follower = pty.openpty()  # a terminal, where a prompt would wait
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "main.py"),
         *argv(workspace, "wb", "--epochs", "1", "--lr", "0.01", "--resize_size", "40",
               "--crop_size", "32", "--wandb", "online")],
        stdin=follower, stdout=follower, stderr=follower, env=env, cwd=tmp_path)
    os.close(follower)
    output = b""
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1)
        if ready:
            try:
                output += os.read(leader, 65536)
            except OSError:
                break
    try:  # the terminal closes just before the process exits
        process.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the run waited at a prompt:\n" + output.decode(errors="replace")[-2000:])
    server.close()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    assert "no wandb API key" in text and "Enter your choice" not in text
    assert "wandb sync" in text  # where the offline run is and how to upload it
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert lines[0] == {"mode": "offline", "dir": env["WANDB_DIR"]}
    logged = lines[-1]
    # Every metric of the printed table.
    for key in ("Top-1 Cls", "cam/softmax/Top-1 Loc", "cam/softmax/GT-known Loc",
                "cam/softmax/MaxBoxAccV2", "cam/softmax/PxAP", "gradcam/softmax/MaxBoxAccV2"):
        assert key in logged, key


def test_progress_shows_in_a_redirected_log_without_a_line_per_batch(caplog, monkeypatch):
    from wsol.runtime import progress as progress_module
    clock = iter(float(t) for t in range(0, 1000, 10))  # each step takes 10 s
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger=progress_module.__name__):
        items = list(progress_module.progress(range(12), "epoch 1", bar=False, every_s=30))
    assert items == list(range(12))
    lines = [r.getMessage() for r in caplog.records]
    # 12 steps of 10 s, a line at most every 30 s, none after the last item.
    assert lines == ["epoch 1: 3/12 (30 s, about 90 s left)",
                     "epoch 1: 6/12 (60 s, about 60 s left)",
                     "epoch 1: 9/12 (90 s, about 30 s left)"]

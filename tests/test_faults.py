"""Faults a shared cluster brings: pre-emption signals, full disks,
concurrent runs, NaNs, and images, metadata and checkpoints as they come.

Signals and crashes are injected in subprocesses (tests/fault_driver.py runs
main.py with a fault at a chosen training step or write).
"""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import config
import main
from tests.conftest import copy_as_dataset, synth_argv
from wsol.data.device_decode import exif_orientation, upright
from wsol.data.images import open_rgb
from wsol.pipeline import evaluate_run
from wsol.runtime.build import build_model
from wsol.runtime.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint
from wsol.runtime.lock import LOCK_NAME

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "fault_driver.py")


@pytest.fixture()
def workspace(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    return tmp_path


def argv(root, name, *extra, workers="0"):
    return synth_argv(root, name, "--resize_size", "40", "--crop_size", "32", "--workers",
                      workers, "--method", "cam", "--lr", "0.05", "--lr_decay_frequency", "1",
                      *extra)


def drive(root, args, fault=None, timeout=300):
    """main.py in a subprocess, with ``fault`` (see tests/fault_driver.py)."""
    env = {**os.environ, "PYTHONPATH": REPO, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "FAULT": json.dumps(fault or {})}
    return subprocess.run([sys.executable, DRIVER, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def weights(path):
    return load_checkpoint_file(str(path))


def assert_same_training(a, b):
    a, b = weights(a), weights(b)
    assert a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"],
                           b["optimizer"]["state"][index]["momentum_buffer"])


# -- pre-emption ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tiny_synth_root, tmp_path_factory):
    """Two epochs without interruption (3 batches each)."""
    root = tmp_path_factory.mktemp("full")
    copy_as_dataset(tiny_synth_root, root, "SYNTH")
    done = drive(root, argv(root, "full", "--epochs", "2", "--skip_eval"))
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "train_log" / "full" / "last_checkpoint.pth.tar"


@pytest.mark.parametrize("signal_name,workers", [("SIGTERM", "0"), ("SIGUSR1", "2")])
def test_a_signal_mid_epoch_then_resume_equals_the_uninterrupted_run(
        workspace, uninterrupted, signal_name, workers):
    args = argv(workspace, "cut", "--epochs", "2", "--skip_eval", workers=workers)
    done = drive(workspace, args, {"kind": "signal", "step": 5, "signal": signal_name})
    signum = getattr(signal, signal_name)
    assert done.returncode == 128 + signum, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {signal_name} in epoch 2 after batch 2 of 3")
    assert "interrupted_checkpoint.pth.tar: continue with --resume" in last
    assert "Traceback" not in done.stderr
    done = drive(workspace, [*args, "--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming epoch 2 after batch 2" in done.stderr
    assert_same_training(uninterrupted, workspace / "train_log/cut/last_checkpoint.pth.tar")
    # The mid-epoch state is gone once its epoch is complete.
    assert not (workspace / "train_log/cut/interrupted_checkpoint.pth.tar").exists()


def test_a_signal_during_the_first_save_is_resumable(workspace, uninterrupted):
    args = argv(workspace, "save", "--epochs", "2", "--skip_eval")
    done = drive(workspace, args, {"kind": "signal_in_save", "signal": "SIGTERM"})
    assert done.returncode == 143, done.stderr[-2000:]
    assert "stopped by SIGTERM after epoch 1; continue with --resume" in done.stderr
    folder = workspace / "train_log" / "save"
    assert weights(folder / "1_checkpoint.pth.tar")["epoch"] == 1
    # A killed save leaves its temporary file; the next run removes it.
    (folder / "tmpabc123.tmp").write_bytes(b"partial")
    done = drive(workspace, [*args, "--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (folder / "tmpabc123.tmp").exists()
    assert_same_training(uninterrupted, folder / "last_checkpoint.pth.tar")


def test_resume_takes_the_newest_complete_checkpoint_of_any_kind(workspace, uninterrupted):
    args = argv(workspace, "link", "--epochs", "2", "--skip_eval")
    assert drive(workspace, [*args[:-3], "--epochs", "1", "--skip_eval"]).returncode == 0
    folder = workspace / "train_log" / "link"
    # Killed between writing the epoch's checkpoint and linking last_checkpoint to it,
    # with a damaged copy lying around.
    os.remove(folder / "last_checkpoint.pth.tar")
    (folder / "0_checkpoint.pth.tar").write_bytes(b"PK\x03\x04 truncated")
    done = drive(workspace, [*args, "--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "passing over" in done.stderr and "resuming after epoch 1" in done.stderr
    assert_same_training(uninterrupted, folder / "last_checkpoint.pth.tar")


def test_ctrl_c_exits_with_one_line(workspace):
    done = drive(workspace, argv(workspace, "ctrlc", "--epochs", "2", "--skip_eval"),
                 {"kind": "ctrl_c", "step": 5})
    assert done.returncode == 130
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted (Ctrl-C); the newest checkpoint is ")
    assert "1_checkpoint.pth.tar: --resume continues the training" in last
    assert "Traceback" not in done.stderr


def test_sigterm_during_evaluation_says_what_is_kept(workspace):
    done = drive(workspace, argv(workspace, "ev", "--epochs", "1"),
                 {"kind": "signal_in_eval", "signal": "SIGTERM"})
    assert done.returncode == 143
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM; the newest checkpoint is ")
    assert "Traceback" not in done.stderr


# -- disks and writes -------------------------------------------------------------------
def test_a_full_disk_at_a_checkpoint_save_gives_one_line(workspace):
    done = drive(workspace, argv(workspace, "full_disk", "--epochs", "2", "--skip_eval"),
                 {"kind": "disk_full", "on": "checkpoint", "after": 1})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    folder = workspace / "train_log" / "full_disk"
    assert last.startswith(f"error: cannot write checkpoint {folder}/2_checkpoint.pth.tar: no "
                           f"space left on the device (it needs about ")
    assert "the checkpoints before it are kept" in last and "Traceback" not in done.stderr
    assert weights(folder / "last_checkpoint.pth.tar")["epoch"] == 1
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_a_full_disk_at_the_results_keeps_the_table_and_the_previous_file(workspace):
    done = drive(workspace, argv(workspace, "res", "--epochs", "0"))
    assert done.returncode == 0, done.stderr[-2000:]
    results = workspace / "train_log" / "res" / "results_test.json"
    before = results.read_bytes()
    done = drive(workspace, argv(workspace, "res", "--eval_only"),
                 {"kind": "disk_full", "on": "json", "after": 1})  # config_eval.json fits
    assert done.returncode == 2
    assert "MaxBoxAccV2" in done.stdout  # the table came first
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write the results (printed above) to {results}: "
                           f"no space left on the device")
    assert last.endswith("the previous file is unchanged")
    assert results.read_bytes() == before


# -- one run per folder ----------------------------------------------------------------
def test_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(workspace, capsys):
    assert main.main(argv(workspace, "busy", "--epochs", "1", "--skip_eval")) == 0
    folder = workspace / "train_log" / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK_NAME).write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "since": "today"}))
        for flag in ("--override_cache", "--resume"):
            code = main.main(argv(workspace, "busy", "--epochs", "2", "--skip_eval", flag))
            err = capsys.readouterr().err
            assert code == 2 and f"process {holder.pid} on this machine" in err, err
            assert f"delete {folder / LOCK_NAME} if that run is gone" in err
        assert weights(folder / "last_checkpoint.pth.tar")["epoch"] == 1  # untouched
    finally:
        holder.kill()
        holder.wait()
    # Its process is gone: the lock is stale and taken over.
    assert main.main(argv(workspace, "busy", "--epochs", "2", "--skip_eval", "--resume")) == 0
    assert weights(folder / "last_checkpoint.pth.tar")["epoch"] == 2
    assert not (folder / LOCK_NAME).exists()  # released at the end


def test_a_lock_of_another_host_is_refused(workspace, capsys):
    assert main.main(argv(workspace, "remote", "--epochs", "0", "--skip_eval")) == 0
    folder = workspace / "train_log" / "remote"
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-17", "since": "x"}))
    assert main.main(argv(workspace, "remote", "--epochs", "0", "--override_cache")) == 2
    assert "host node-17" in capsys.readouterr().err
    assert folder.exists()


# -- numbers ---------------------------------------------------------------------------
def test_nan_weights_are_refused_at_load(workspace, capsys):
    assert main.main(argv(workspace, "v", "--epochs", "0", "--skip_eval")) == 0
    path = workspace / "train_log" / "v" / "last_checkpoint.pth.tar"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["layer4.1.conv2.weight"][0, 0, 0, 0] = float("nan")
    save_checkpoint(checkpoint, str(path))  # a diverged run's own checkpoint: checksums agree
    code = main.main(argv(workspace, "b2", "--model_structure", "b2", "--ft_ckpt", str(path),
                          "--epochs", "1"))
    err = capsys.readouterr().err
    assert code == 2 and "tensor layer4.1.conv2.weight holds 1 NaN/inf value(s)" in err
    code = main.main(argv(workspace, "v", "--eval_only"))
    assert code == 2 and "layer4.1.conv2.weight" in capsys.readouterr().err


def test_a_diverging_loss_stops_the_run_without_saving_the_epoch(workspace, capsys):
    code = main.main(argv(workspace, "boom", "--epochs", "2", "--lr", "1e30"))
    err = capsys.readouterr().err
    assert code == 2
    assert "the training loss is NaN or infinite" in err and "batch" in err
    assert "the run stops without saving this epoch" in err
    folder = workspace / "train_log" / "boom"
    for name in os.listdir(folder) if folder.exists() else []:
        if name.endswith(".pth.tar"):  # only epochs whose weights were still finite
            state = weights(folder / name)["state_dict"]
            assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_nan_logits_get_a_warning_column(workspace, capsys):
    args = config.get_configs(argv(workspace, "nanlogits", "--epochs", "0"))
    model, spec = build_model(args)
    with torch.no_grad():
        model.head_module.bias[3] = float("nan")
    results = evaluate_run(args, model, spec, torch.device("cpu"))
    assert results["num_nonfinite_logits"] == results["num_images"]
    from wsol.results import format_table
    table = format_table(results).splitlines()
    assert table[0].split()[-1] == "warning"
    assert f"NaN/inf logits on {results['num_images']} images" in table[2]


# -- images ----------------------------------------------------------------------------
def _exif_jpeg(path, array, orientation):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=100, subsampling=0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_on_both_decoding_paths(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / "x.jpg"
    _exif_jpeg(path, stored, orientation)
    with Image.open(path) as raw:
        expected = np.asarray(raw.convert("RGB")).copy()
    # What PIL's own exif_transpose does, spelt out per orientation.
    turned = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
              4: lambda a: a[::-1], 5: lambda a: a.transpose(1, 0, 2),
              6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
              8: lambda a: np.rot90(a, 1)}[orientation](expected)
    assert np.array_equal(np.asarray(open_rgb(str(path))), turned)
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    assert exif_orientation(data) == orientation
    decoded = torch.from_numpy(expected.copy()).permute(2, 0, 1)
    assert torch.equal(upright(decoded, orientation).permute(1, 2, 0),
                       torch.from_numpy(np.ascontiguousarray(turned)))


def test_16_bit_and_palette_pngs_are_read_correctly(tmp_path):
    grey = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert np.asarray(open_rgb(str(tmp_path / "g16.png")))[0, :, 0].tolist() == [0, 1, 128, 255]
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(open_rgb(str(tmp_path / "p.png"))).tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_a_tiny_image_is_warned_about(tmp_path, caplog):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    with caplog.at_level(logging.WARNING):
        open_rgb(str(tmp_path / "dot.png"))
    assert f"image {tmp_path / 'dot.png'} is 1x1 px" in caplog.text


def test_a_bad_image_in_a_worker_is_one_line_and_skipped_images_are_in_the_table(workspace,
                                                                                capsys):
    ids = (workspace / "metadata/SYNTH/test/image_ids.txt").read_text().split()
    broken = workspace / "dataset" / "SYNTH" / ids[0]
    broken.write_bytes(b"not an image")
    code = main.main(argv(workspace, "w", "--epochs", "0", workers="2"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: cannot read image {broken}: cannot identify image file {str(broken)!r} "
        f"(fix or remove it, or pass --skip_bad_images)")
    assert "Traceback" not in err
    assert main.main(argv(workspace, "s", "--epochs", "0", "--skip_bad_images",
                          workers="2")) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-1] == "warning" and "1 unreadable images skipped" in table[2]


def test_a_killed_worker_is_one_line(workspace):
    done = drive(workspace, argv(workspace, "oom", "--epochs", "1", workers="1"),
                 {"kind": "kill_worker"})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DataLoader worker (pid")
    assert "(usually the out-of-memory killer): lower --workers" in last


# -- metadata --------------------------------------------------------------------------
def _metadata(workspace, name):
    return workspace / "metadata" / "SYNTH" / "test" / name


@pytest.mark.parametrize("name", ["image_ids.txt", "class_labels.txt", "image_sizes.txt"])
def test_duplicate_image_ids_are_refused_with_file_and_line(workspace, capsys, name):
    path = _metadata(workspace, name)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    assert main.main(argv(workspace, "dup", "--epochs", "0")) == 2
    err = capsys.readouterr().err
    assert (f"{path}:{len(lines) + 1}: image id {lines[0].split(',')[0]!r} is listed again "
            f"(first on line 1)") in err


def test_a_byte_order_mark_is_ignored(workspace, capsys):
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        path = _metadata(workspace, name)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main.main(argv(workspace, "bom", "--epochs", "0")) == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_coordinates_are_refused_with_file_and_line(workspace, capsys, value):
    path = _metadata(workspace, "localization.txt")
    lines = path.read_text().splitlines()
    image_id, x0, y0, x1, y1 = lines[1].split(",")
    lines[1] = ",".join([image_id, value, y0, x1, y1])
    path.write_text("\n".join(lines) + "\n")
    assert main.main(argv(workspace, "nanbox", "--epochs", "0")) == 2
    assert f"{path}:2: {value!r} is not a finite number" in capsys.readouterr().err


# -- checkpoint files ------------------------------------------------------------------
def test_every_kind_of_non_checkpoint_gets_one_sentence(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, good)
    files = {"empty.pth": b"", "text.pth": b"epoch,loss\n1,0.5\n",
             "random.pth": bytes([0xEA, 0xD9, 0x11, 0x2F]) * 100,
             "numpy.pth": b"\x93NUMPY\x01\x00" + b"\x00" * 50,
             "truncated.pth": good.read_bytes()[:200]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    expected = {"empty.pth": "is empty (0 bytes)",
                "text.pth": "is a text file, not a checkpoint (it starts 'epoch,loss')",
                "random.pth": "is not a PyTorch checkpoint (unknown content, first bytes "
                              "ea d9 11 2f)",
                "numpy.pth": "is a NumPy .npy file, not a checkpoint",
                "truncated.pth": "is truncated or damaged (its zip archive is incomplete"}
    for name, phrase in expected.items():
        with pytest.raises(CheckpointError) as error:
            load_checkpoint_file(str(tmp_path / name))
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name} {phrase}"), message
        assert "\n" not in message
    unsafe = tmp_path / "unsafe.pth"
    done = subprocess.run([sys.executable, "-c", (
        "import torch, collections\n"
        "class Thing: pass\n"
        f"torch.save({{'state_dict': {{}}, 'thing': Thing()}}, {str(unsafe)!r})")],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with pytest.raises(CheckpointError, match=r"stores a Python object \(__main__.Thing\) "
                                              r"that needs unsafe unpickling"):
        load_checkpoint_file(str(unsafe))


# -- distributed -----------------------------------------------------------------------
def test_global_batch_size_is_split_over_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert config.get_configs(["--global_batch_size", "64"]).optim.batch_size == 16
    with pytest.raises(config.ConfigError, match="multiple of the number of processes"):
        config.get_configs(["--global_batch_size", "30"])
    with pytest.raises(config.ConfigError, match="not both"):
        config.get_configs(["--global_batch_size", "64", "--batch_size", "8"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert config.get_configs(["--global_batch_size", "64"]).optim.batch_size == 64


@pytest.mark.slow
def test_a_stopped_rank_ends_the_job_within_the_timeout(workspace):
    env = {**os.environ, "PYTHONPATH": REPO, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "FAULT": json.dumps({"kind": "stop_rank", "rank": 1, "step": 2})}
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29533", DRIVER,
         *argv(workspace, "stuck", "--epochs", "2", "--dist_timeout", "15")],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert time.time() - start < 200
    assert "did not answer within --dist_timeout" in done.stderr, done.stderr[-3000:]

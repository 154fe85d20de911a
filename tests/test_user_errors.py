"""The last silent numbers and raw tracebacks: damaged checkpoints, metadata
that disagrees with its images, out-of-range flags, read-only folders, empty
splits, bad saved maps, and the newcomer's path (README snippets, defaults
that fit the model, one-line errors)."""
from __future__ import annotations

import builtins
import errno
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import config
import evaluation
import explain
import main
from tests.conftest import copy_as_dataset
from tests.test_faults import argv, weights
from wsol.runtime.checkpoint import CheckpointError, load_checkpoint_file, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def workspace(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    return tmp_path


def damage(path, tensor: torch.Tensor) -> None:
    """Overwrite bytes in the middle of ``tensor``'s data in the file: the zip
    archive stays readable, the tensor does not stay what was saved."""
    data = bytearray(open(path, "rb").read())
    raw = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    start = data.find(raw[:64])
    assert start > 0
    middle = start + len(raw) // 2
    data[middle:middle + 16] = bytes((b + 1) % 256 for b in data[middle:middle + 16])
    open(path, "wb").write(bytes(data))


# -- damaged checkpoints ---------------------------------------------------------------
def test_a_checkpoint_overwritten_in_the_middle_is_refused_at_every_load(workspace, capsys):
    assert main.main(argv(workspace, "rot", "--epochs", "2", "--skip_eval")) == 0
    folder = workspace / "train_log" / "rot"
    last = folder / "last_checkpoint.pth.tar"
    epoch2 = weights(folder / "2_checkpoint.pth.tar")
    damage(folder / "2_checkpoint.pth.tar", epoch2["state_dict"]["fc.weight"])  # last too
    capsys.readouterr()
    assert main.main(argv(workspace, "rot", "--eval_only")) == 2
    err = capsys.readouterr().err
    assert "last_checkpoint.pth.tar is damaged: tensor state_dict/fc.weight is not what " \
           "was saved" in err and "Traceback" not in err
    assert main.main(argv(workspace, "ft", "--epochs", "1", "--ft_ckpt", str(last),
                          "--skip_eval")) == 2
    assert "is damaged: tensor state_dict/fc.weight" in capsys.readouterr().err
    assert explain.main(["--ckpt", str(last), "--image", str(last)]) == 2
    assert "is damaged" in capsys.readouterr().err
    # --resume passes over it to the newest intact checkpoint (epoch 1).
    assert main.main(argv(workspace, "rot", "--epochs", "2", "--skip_eval", "--resume")) == 0
    err = capsys.readouterr().err
    assert "passing over" in err and "resuming after epoch 1" in err
    assert weights(last)["epoch"] == 2
    # The mismatch is found in any tensor of the payload, the optimizer's too.
    payload = {"state_dict": {"w": torch.arange(4.0)},
               "optimizer": {"state": {0: {"momentum_buffer": torch.arange(1000.0)}}}}
    path = workspace / "opt.pth.tar"
    save_checkpoint(payload, str(path))
    damage(path, payload["optimizer"]["state"][0]["momentum_buffer"])
    with pytest.raises(CheckpointError, match="tensor optimizer/state/0/momentum_buffer"):
        load_checkpoint_file(str(path))


def test_checkpoints_of_other_code_still_load_and_pickles_are_named_right(tmp_path):
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 3)}}, tmp_path / "foreign.pth")
    assert "checksums" not in load_checkpoint_file(str(tmp_path / "foreign.pth"))
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": [1]}, tmp_path / "legacy.pth",
               _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="written by torch.save but holds objects"):
        load_checkpoint_file(str(tmp_path / "legacy.pth"))
    import pickle
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"state_dict": {"a": 1}}, f, protocol=4)
    with pytest.raises(CheckpointError, match="a plain pickle, not torch.save's format"):
        load_checkpoint_file(str(tmp_path / "plain.pkl"))


# -- metadata and flags ----------------------------------------------------------------
def test_image_sizes_that_disagree_with_the_images_are_refused(workspace, capsys):
    sizes = workspace / "metadata" / "SYNTH" / "test" / "image_sizes.txt"
    lines = sizes.read_text().split()
    first_id, width, height = lines[0].split(",")
    sizes.write_text("".join(f"{i},{2 * int(w)},{2 * int(h)}\n"
                             for i, w, h in (line.split(",") for line in lines)))
    code = main.main(argv(workspace, "sizes", "--epochs", "0"))
    err = capsys.readouterr().err
    assert code == 2
    assert f"image_sizes.txt disagrees with {len(lines)} of {len(lines)} images" in err
    assert (f"image_sizes.txt:1 says {2 * int(width)}x{2 * int(height)} for {first_id}, "
            f"which is {width}x{height}") in err
    assert err.count(" says ") == 3  # the first three
    assert not (workspace / "train_log" / "sizes").exists()  # before any work


def test_an_exif_rotated_image_is_measured_upright(tmp_path):
    from PIL import Image

    from wsol.data.metadata import MetadataError, check_image_sizes, configure_metadata
    image = Image.new("RGB", (30, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90: the image is read 20 wide, 30 high
    image.save(tmp_path / "a.jpg", exif=exif)
    (tmp_path / "image_sizes.txt").write_text("a.jpg,20,30\n")
    check_image_sizes(configure_metadata(str(tmp_path)), str(tmp_path))
    (tmp_path / "image_sizes.txt").write_text("a.jpg,30,20\n")
    with pytest.raises(MetadataError, match="says 30x20 for a.jpg, which is 20x30"):
        check_image_sizes(configure_metadata(str(tmp_path)), str(tmp_path))


@pytest.mark.parametrize("flags,message", [
    (["--iou_threshold_list", "0", "101"], "IoU thresholds are percentages in (0, 100], got 0 "
                                           "101"),
    (["--iou_threshold_list", "30", "101"], "got 101"),
    (["--loc_threshold", "2"], "--loc_threshold must be in [0, 1]"),
    (["--cam_curve_interval", "1"], "--cam_curve_interval must be in (0, 1)"),
])
def test_out_of_range_flags_are_refused_by_main_and_evaluation(workspace, capsys, flags,
                                                                message):
    assert main.main(argv(workspace, "range", "--epochs", "0", *flags)) == 2
    assert message in capsys.readouterr().err
    assert not (workspace / "train_log" / "range").exists()
    assert evaluation.main(["--dataset_name", "SYNTH", "--scoremap_root", str(workspace),
                            "--metadata_root", str(workspace / "metadata"), *flags]) == 2
    assert message in capsys.readouterr().err


# -- read-only folders -----------------------------------------------------------------
@pytest.fixture()
def read_only(monkeypatch):
    """Make writes under a folder fail as on a read-only file system."""
    roots: list[str] = []

    def inside(path) -> bool:
        path = os.path.abspath(os.fspath(path))
        return any(path == r or path.startswith(r + os.sep) for r in roots)

    def refuse(path):
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    real_open, real_os_open = builtins.open, os.open
    real_makedirs, real_remove, real_replace = os.makedirs, os.remove, os.replace
    real_rmtree = shutil.rmtree

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and inside(file) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_makedirs(path, *args, **kwargs):
        if inside(path) and not os.path.isdir(path):
            refuse(path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "makedirs", fake_makedirs)
    monkeypatch.setattr(os, "remove", lambda p, *a, **k: refuse(p) if inside(p)
                        else real_remove(p, *a, **k))
    monkeypatch.setattr(os, "replace", lambda a, b, *x, **k: refuse(b) if inside(b)
                        else real_replace(a, b, *x, **k))
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: refuse(p) if inside(p)
                        else real_rmtree(p, *a, **k))
    return lambda folder: roots.append(os.path.abspath(os.fspath(folder)))


def _files(folder):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("kind", ["train", "eval_only", "resume", "override"])
def test_a_read_only_log_folder_is_one_line_and_nothing_is_written_over(workspace, capsys,
                                                                         read_only, kind):
    assert main.main(argv(workspace, "ro", "--epochs", "1", "--skip_eval")) == 0
    root = workspace / "train_log"
    before = _files(root)
    read_only(root)
    capsys.readouterr()
    extra = {"train": ["--experiment_name", "new", "--epochs", "1"],
             "eval_only": ["--eval_only"], "resume": ["--epochs", "2", "--resume"],
             "override": ["--epochs", "1", "--override_cache"]}[kind]
    code = main.main(argv(workspace, "ro", *extra))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert re.search(r"^error: cannot write .* the file system is read-only; choose another "
                     r"--root, or make it writable$", err.strip(), re.M), err
    assert _files(root) == before


# -- empty splits and bad images -------------------------------------------------------
@pytest.mark.parametrize("split", ["test", "train"])
def test_an_empty_split_is_one_line_before_any_work(workspace, capsys, split):
    (workspace / "metadata" / "SYNTH" / split / "image_ids.txt").write_text("")
    assert main.main(argv(workspace, "empty", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert f"{split}/image_ids.txt lists no images: the {split} split is empty" in err
    assert not (workspace / "train_log" / "empty").exists()


@pytest.mark.parametrize("split,message", [
    ("test", "no image of the split could be scored: every one was unreadable and skipped"),
    ("train", "no training image could be read: every one was unreadable and skipped")])
def test_every_image_unreadable_under_skip_bad_images_is_one_line(workspace, capsys, split,
                                                                  message):
    for line in (workspace / "metadata" / "SYNTH" / split / "image_ids.txt").read_text().split():
        (workspace / "dataset" / "SYNTH" / line).write_bytes(b"not an image")
    code = main.main(argv(workspace, "bad", "--epochs", "1", "--skip_bad_images"))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


# -- saved maps --------------------------------------------------------------------------
def test_bad_saved_maps_are_named_with_how_maps_are_saved(workspace, capsys):
    assert main.main(argv(workspace, "maps", "--epochs", "0", "--save_scoremaps")) == 0
    folder = workspace / "train_log" / "maps" / "scoremaps" / "test" / "cam_softmax"
    first = sorted(folder.rglob("*.npy"))[0]
    common = ["--dataset_name", "SYNTH", "--root", str(workspace / "train_log"),
              "--experiment_name", "maps", "--metadata_root", str(workspace / "metadata"),
              "--mask_root", str(workspace / "dataset")]
    expected = "maps are saved as main.py --save_scoremaps writes them: one .npy per image"
    for bad, problem in ((np.full((224, 224), np.nan, np.float32), "NaN or infinite"),
                         (np.full((224, 224), np.inf, np.float32), "NaN or infinite"),
                         (np.zeros((10, 13), np.float32), "it is 10x13")):
        np.save(first, bad)
        capsys.readouterr()
        assert evaluation.main(common) == 2
        err = capsys.readouterr().err
        assert f"score map {first}: " in err and problem in err and expected in err
        assert "Traceback" not in err


def test_a_folder_of_maps_without_predictions_has_no_top1_loc(workspace, capsys):
    assert main.main(argv(workspace, "one", "--epochs", "0", "--save_scoremaps")) == 0
    folder = workspace / "train_log" / "one" / "scoremaps" / "test" / "cam_softmax"
    capsys.readouterr()
    assert evaluation.main(["--dataset_name", "SYNTH", "--scoremap_root", str(folder),
                            "--metadata_root", str(workspace / "metadata"),
                            "--mask_root", str(workspace / "dataset")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, row = (re.split(r"\s{2,}", line.strip()) for line in (lines[0], lines[2]))
    cells = dict(zip(header, row))
    assert (cells["method"], cells["branch"]) == ("maps", "-")
    assert cells["Top-1 Cls"] == cells["Top-1 Loc"] == "-"


# -- the newcomer's path -----------------------------------------------------------------
@pytest.fixture()
def without_timm(monkeypatch):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("architecture", ["vit", "timm:resnet18"])
def test_an_architecture_that_needs_timm_says_so_once(workspace, capsys, without_timm,
                                                      architecture):
    assert main.main(argv(workspace, "t", "--architecture", architecture)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --architecture {architecture} needs timm, an optional "
                   f"dependency: pip install timm")
    assert not (workspace / "train_log" / "t").exists()


def test_the_default_methods_are_those_the_models_head_allows(workspace, capsys):
    pytest.importorskip("timm")
    vit = argv(workspace, "vit", "--epochs", "0", "--architecture", "vit")
    at = vit.index("--method")
    del vit[at:at + 2]  # --method left at its default
    results = main.run(config.get_configs(vit))
    assert [r["method"] for r in results["rows"]] == ["gradcam"]
    assert re.search(r"--method: gradcam, not the default cam,gradcam: cam (needs class "
                     r"weights|is not defined)", capsys.readouterr().err)
    # An explicit cam is refused with the model check's message.
    assert main.main(argv(workspace, "vit2", "--epochs", "0", "--architecture", "vit",
                          "--method", "cam")) == 2
    assert re.search("cam (needs class weights|is not defined)", capsys.readouterr().err)
    # explain.py's default cam becomes gradcam, with a note.
    image = next((workspace / "dataset" / "SYNTH").rglob("*.png"))
    ckpt = workspace / "train_log" / "vit" / "last_checkpoint.pth.tar"
    out = workspace / "vit.png"
    assert explain.main(["--ckpt", str(ckpt), "--image", str(image), "--output", str(out)]) == 0
    assert "note: --method gradcam, not the default cam" in capsys.readouterr().err
    assert out.is_file()


def test_a_missing_ft_ckpt_is_one_line_and_makes_no_folder(workspace, capsys):
    code = main.main(argv(workspace, "noft", "--model_structure", "b2", "--ft_ckpt",
                          str(workspace / "nowhere.pth.tar")))
    assert code == 2 and "--ft_ckpt" in capsys.readouterr().err
    assert not (workspace / "train_log" / "noft").exists()


def test_a_failed_eval_only_leaves_no_folder(workspace, capsys):
    assert main.main(argv(workspace, "never_trained", "--eval_only")) == 2
    assert "no checkpoint to evaluate" in capsys.readouterr().err
    assert not (workspace / "train_log" / "never_trained").exists()


def test_the_removed_temporary_files_are_reported(workspace, capsys):
    assert main.main(argv(workspace, "tmp", "--epochs", "1", "--skip_eval")) == 0
    (workspace / "train_log" / "tmp" / "abc.tmp").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert main.main(argv(workspace, "tmp", "--epochs", "1", "--skip_eval", "--resume")) == 0
    assert "removed abc.tmp, left by an interrupted save" in capsys.readouterr().err
    assert not (workspace / "train_log" / "tmp" / "abc.tmp").exists()


def test_a_vanilla_grid_is_titled_with_its_one_branch(tmp_path, monkeypatch):
    import wsol.visualize as viz
    titles = []
    monkeypatch.setattr(viz, "_grid", lambda rows, labels, title: titles.append(
        (labels, title)) or np.zeros((4, 4, 3), np.uint8))
    collector = viz.OverlayCollector(1, size=8)
    image = torch.zeros(1, 3, 8, 8)
    collector.add("softmax", image, torch.tensor([0]), torch.tensor([0]), ["a"],
                  {"cam": torch.rand(1, 8, 8)})
    collector.write_grid("cam", ["softmax"], str(tmp_path / "g.png"))
    labels, title = titles[0]
    assert labels == ["image + GT", "softmax (vanilla)"]
    assert "the softmax (vanilla) branch" in title and "sigmoid" not in title


def test_run_experiments_uses_mains_default_workers():
    from scripts import run_experiments
    assert run_experiments.build_parser().get_default("workers") == \
        config.build_parser().get_default("workers") == min(4, os.cpu_count() or 1)


README = os.path.join(REPO, "README.md")


def readme_snippets() -> list[str]:
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("index", range(len(readme_snippets())))
def test_every_readme_snippet_runs_as_written(index, tmp_path):
    done = subprocess.run([sys.executable, "-c", readme_snippets()[index]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]


# -- the CAM methods' names and settings --------------------------------------------------
def test_method_settings_and_methods_that_do_not_fit_are_one_line(workspace, capsys):
    assert main.main(argv(workspace, "opt", "--epochs", "0", "--method", "sscam",
                          "--cam_option", "sscam.sample=3")) == 2
    err = capsys.readouterr().err
    assert "--cam_option sscam.sample: sscam has no setting 'sample' (its settings: samples, " \
           "std, batch_size)" in err and "Traceback" not in err
    assert main.main(argv(workspace, "lg", "--epochs", "0", "--method", "legrad")) == 2
    err = capsys.readouterr().err
    assert "legrad reads the attention of a vision transformer" in err
    assert "Traceback" not in err
    assert not (workspace / "train_log" / "lg").exists()
    # Dual-CAM's --methods, and settings that reach the method.
    settings = config.build_settings(*config.parse_main_args(argv(
        workspace, "m", "--epochs", "0", "--methods", "gradcam,iscam",
        "--cam_option", "iscam.samples=3", "--cam_option", "iscam.batch_size=7")))
    methods = settings.cams.instances()
    assert [m.name for m in methods] == ["gradcam", "iscam"]
    assert (methods[1].samples, methods[1].batch_size) == (3, 7)


@pytest.mark.slow
def test_method_all_scores_what_the_model_can_give(workspace, capsys):
    run = argv(workspace, "all", "--epochs", "0", "--method", "all",
               "--cam_option", "sscam.samples=1", "--cam_option", "iscam.samples=1",
               "--scorecam_topk", "2", "--smooth_samples", "1")
    results = main.run(config.get_configs(run))
    from wsol.cams import CAM_METHODS
    assert [r["method"] for r in results["rows"]] == [m for m in CAM_METHODS if m != "legrad"]
    assert "legrad: legrad reads the attention of a vision transformer" in \
        capsys.readouterr().err
    for row in results["rows"]:
        assert 0 <= row["MaxBoxAccV2"] <= 100, row["method"]

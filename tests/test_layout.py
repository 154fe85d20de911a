"""The shape of the code: one-way layers, an installable library, strict JSON,
a command line without silent flags."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

import config
import evaluation
import main
from tests.conftest import copy_as_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_LEVEL = {"main", "config", "data_loaders", "inference", "evaluation", "explain", "scripts",
             "tests"}


def _imported_modules(path: str) -> set[str]:
    """Every module an ``import`` / ``from ... import`` names, at any depth
    (imports inside functions included)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_library_imports_nothing_from_the_top_level():
    offenders = {}
    for folder, _, files in os.walk(os.path.join(REPO, "wsol")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                bad = _imported_modules(path) & TOP_LEVEL
                if bad:
                    offenders[os.path.relpath(path, REPO)] = sorted(bad)
    assert offenders == {}


def test_the_detector_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from config import str2bool\n    import inference\n")
    assert {"config", "inference"} <= _imported_modules(str(module))


def test_the_front_door_works_from_any_folder(tmp_path):
    code = ("from wsol import CAMModel, compute_cams, evaluation_maps, CAM_METHODS; "
            "import wsol; print(wsol.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr  # pip install -e . put wsol on the path
    assert done.stdout.strip().startswith(os.path.join(REPO, "wsol"))


def _strict(path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


def test_results_and_configs_are_strict_json_even_with_nan_metrics(tiny_synth_root, tmp_path):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    argv = ["--dataset_name", "SYNTH", "--architecture", "resnet18", "--data_root",
            str(tmp_path / "dataset"), "--metadata_root", str(tmp_path / "metadata"), "--root",
            str(tmp_path / "runs"), "--resize_size", "40", "--crop_size", "32",
            "--batch_size", "8", "--workers", "0", "--cam_curve_interval", "0.01",
            "--experiment_name", "e", "--epochs", "1", "--lr", "0.01", "--fidelity"]
    results = main.run(config.get_configs(argv))
    assert any(v != v for row in results["rows"] for v in row.values()
               if isinstance(v, float))  # NaN: insertion/deletion AUC were not asked for
    folder = tmp_path / "runs" / "e"
    for name in ("results_test.json", "config.json", "lr_schedule.json"):
        _strict(folder / name)
    row = _strict(folder / "results_test.json")["rows"][0]
    assert row["Insertion AUC"] is None


def test_demo_flags_apply_to_both_demo_runs(monkeypatch):
    seen = []
    monkeypatch.setattr(main, "run", lambda args: seen.append(args) or {"rows": []})
    assert main.main(["--demo", "--workers", "0", "--root", "elsewhere"]) == 0
    assert [a.runtime.experiment_name for a in seen] == ["demo_vanilla", "demo_b2"]
    assert all(a.data.workers == 0 and a.runtime.root == "elsewhere" for a in seen)
    assert seen[1].model.ft_ckpt == os.path.join("elsewhere", "demo_vanilla",
                                                  "last_checkpoint.pth.tar")


def test_list_prints_what_the_choice_flags_take(capsys):
    assert main.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("vgg16_gradcam", "swin_t", "timm:<model name>", "layercam", "OpenImages"):
        assert name in out


def test_every_flag_has_help_and_compatibility_flags_are_grouped():
    parser = config.build_parser()
    assert all(a.help for a in parser._actions)
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    assert groups["compatibility"] == ["train_only", "wandb_dir", "last_layer", "init_weight",
                                       "debug", "c1", "c2", "t1", "t2", "alpha"]
    assert groups["WSOL methods"][0] == "wsol_method"


def test_single_contour_evaluation_changes_the_printed_column(tiny_synth_root, tmp_path,
                                                               capsys):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    argv = ["--dataset_name", "SYNTH", "--architecture", "resnet18", "--data_root",
            str(tmp_path / "dataset"), "--metadata_root", str(tmp_path / "metadata"), "--root",
            str(tmp_path / "runs"), "--resize_size", "40", "--crop_size", "32",
            "--batch_size", "8", "--workers", "0", "--cam_curve_interval", "0.01",
            "--experiment_name", "e", "--epochs", "0", "--method", "cam"]
    results = main.run(config.get_configs([*argv, "--multi_contour_eval", "FALSE"]))
    lines = capsys.readouterr().out.splitlines()
    assert "MaxBoxAcc " in lines[0] + " " and "MaxBoxAccV2" not in lines[0]
    column = lines[0].index("MaxBoxAcc")
    value = f"{results['rows'][0]['MaxBoxAcc']:.2f}"
    assert lines[2][column:column + len(value)] == value


@pytest.mark.parametrize("box_flag", [[], ["--multi_contour_eval", "FALSE"],
                                      ["--box_threads", "1"]])
def test_evaluation_py_prints_main_pys_table_from_the_saved_maps(tiny_synth_root, tmp_path,
                                                                 capsys, box_flag):
    copy_as_dataset(tiny_synth_root, tmp_path, "SYNTH")
    for split in ("val", "test"):  # SYNTH keeps its masks as well as its boxes
        (tmp_path / "metadata" / "SYNTH" / split / "localization_masks.txt").write_bytes(
            (tiny_synth_root / "metadata" / "SYNTH" / split / "localization_masks.txt")
            .read_bytes())
    common = ["--dataset_name", "SYNTH", "--metadata_root", str(tmp_path / "metadata"),
              "--mask_root", str(tmp_path / "dataset"), "--root", str(tmp_path / "runs"),
              "--experiment_name", "e", *box_flag]
    main.run(config.get_configs([
        *common, "--data_root", str(tmp_path / "dataset"), "--architecture", "resnet18",
        "--resize_size", "40", "--crop_size", "32", "--batch_size", "8", "--workers", "0",
        "--epochs", "1", "--lr", "0.01", "--method", "cam,gradcam", "--cam_branch",
        "softmax", "--save_scoremaps"]))
    table = capsys.readouterr().out.strip()
    # The same maps, scored without a model, with evaluation.py's defaults (main.py's),
    # read from where --save_scoremaps wrote them.
    assert evaluation.main(common) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "\n".join(lines[:-1]) == table
    assert lines[-1].startswith("(scored with cam_curve_interval 0.001") and "run.json" in lines[-1]

"""evaluation.py scores saved maps with the settings of the run that saved
them (its run.json, or the run.rank<R>.json of a torchrun job), refuses a
flag that contradicts them, and says which settings it used."""
from __future__ import annotations

import json
import math
import shutil

import pytest

import config
import evaluation
import main
from tests.conftest import copy_as_dataset

# Settings each run departs from the defaults with (main.py flags).
CASES = {
    "thresholds": ["--loc_threshold", "0.35", "--iou_threshold_list", "40", "60",
                   "--cam_curve_interval", "0.05"],
    "first_box": ["--first_box_only"],
    "single_contour": ["--multi_contour_eval", "FALSE"],
    "public_threshold_list": ["--threshold_list", "public_code"],
}
NUMBERS = ("MaxBoxAccV2", "MaxBoxAcc", "GT-known Loc", "Top-1 Loc", "PxAP",
           "GT-known Loc (first box)", "Top-1 Loc (first box)")


@pytest.fixture(scope="module")
def trained(tiny_synth_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("rescoring")
    copy_as_dataset(tiny_synth_root, root, "SYNTH")
    for split in ("val", "test"):  # SYNTH keeps its masks as well as its boxes
        (root / "metadata" / "SYNTH" / split / "localization_masks.txt").write_bytes(
            (tiny_synth_root / "metadata" / "SYNTH" / split / "localization_masks.txt")
            .read_bytes())
    main.run(config.get_configs(run_argv(root, "--epochs", "1", "--lr", "0.01",
                                         "--skip_eval")))
    return root


def run_argv(root, *extra):
    return ["--dataset_name", "SYNTH", "--architecture", "resnet18", "--experiment_name", "e",
            "--data_root", str(root / "dataset"), "--metadata_root", str(root / "metadata"),
            "--root", str(root / "runs"), "--resize_size", "40", "--crop_size", "32",
            "--batch_size", "8", "--workers", "0", "--method", "cam,gradcam", *extra]


def eval_argv(root, *extra):
    return ["--dataset_name", "SYNTH", "--root", str(root / "runs"), "--experiment_name", "e",
            "--metadata_root", str(root / "metadata"), "--mask_root", str(root / "dataset"),
            "--split", "test", *extra]


def scored(root, *extra) -> dict:
    out = root / "scored.json"
    assert evaluation.main(eval_argv(root, *extra, "--output_json", str(out))) == 0
    return json.loads(out.read_text())


def assert_same_rows(ours: dict, theirs: dict) -> None:
    rows = {(r["method"], r["branch"]): r for r in theirs["rows"]}
    assert len(rows) == len(ours["rows"])
    for row in ours["rows"]:
        other = rows[(row["method"], row["branch"])]
        keys = [k for k in row if k.startswith(NUMBERS) and isinstance(row[k], float)]
        assert keys and all(other[k] == row[k] or (math.isnan(row[k]) and other[k] is None)
                            for k in keys), [(k, row[k], other.get(k)) for k in keys]
    assert theirs["classification"]["Top-1 Cls"] == ours["classification"]["Top-1 Cls"]


@pytest.mark.parametrize("case", list(CASES))
def test_saved_maps_are_rescored_with_the_runs_own_settings(trained, case, capsys):
    results = main.run(config.get_configs(run_argv(trained, "--eval_only", "--save_scoremaps",
                                                   *CASES[case])))
    capsys.readouterr()
    again = scored(trained)
    assert_same_rows(results, again)
    assert "the run's, from" in capsys.readouterr().out
    if case == "thresholds":
        assert again["settings"]["iou_threshold_list"] == [40, 60]
        assert {"MaxBoxAccV2@40", "MaxBoxAccV2@60"} <= set(again["rows"][0])
        assert again["settings"]["loc_threshold"] == 0.35


def test_a_flag_that_contradicts_the_run_is_refused_naming_both(trained, capsys):
    main.run(config.get_configs(run_argv(trained, "--eval_only", "--save_scoremaps",
                                         *CASES["thresholds"])))
    capsys.readouterr()
    assert evaluation.main(eval_argv(trained, "--loc_threshold", "0.2")) == 2
    err = capsys.readouterr().err
    assert "--loc_threshold 0.2 contradicts the run's 0.35" in err and "run.json" in err
    assert evaluation.main(eval_argv(trained, "--iou_threshold_list", "30", "50", "70")) == 2
    assert "--iou_threshold_list 30 50 70 contradicts the run's 40 60" in \
        capsys.readouterr().err
    # Agreeing with it is fine.
    assert evaluation.main(eval_argv(trained, "--loc_threshold", "0.35")) == 0


def test_maps_without_a_record_keep_the_defaults(trained, tmp_path, capsys):
    main.run(config.get_configs(run_argv(trained, "--eval_only", "--save_scoremaps",
                                         *CASES["thresholds"])))
    # wsolevaluation's layout: <image_id>.npy in one folder, no record.
    folder = tmp_path / "maps"
    shutil.copytree(trained / "runs" / "e" / "scoremaps" / "test" / "cam_softmax", folder)
    capsys.readouterr()
    out = scored(trained, "--scoremap_root", str(folder))
    defaults = config.build_parser().get_default
    for key in ("loc_threshold", "cam_curve_interval", "iou_threshold_list"):
        assert out["settings"][key] == defaults(key)
    assert out["rows"][0]["branch"] == "-"
    assert "no run record" in capsys.readouterr().out


def test_the_records_of_a_torchrun_job_are_merged(trained):
    results = main.run(config.get_configs(run_argv(trained, "--eval_only", "--save_scoremaps",
                                                   *CASES["thresholds"])))
    folder = trained / "runs" / "e" / "scoremaps" / "test"
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").unlink()
    ids = sorted(record["predictions"])
    for rank, part in enumerate((ids[::2], ids[1::2])):  # as ShardSampler deals them
        (folder / f"run.rank{rank}.json").write_text(json.dumps(
            {**record, "predictions": {i: record["predictions"][i] for i in part}}))
    assert_same_rows(results, scored(trained))
    # Ranks that disagree were not one run.
    (folder / "run.rank1.json").write_text(json.dumps({**record, "loc_threshold": 0.5}))
    assert evaluation.main(eval_argv(trained)) == 2

"""Pictures (wsol/visualize.py): overlays, grids, curves and their wandb logging.

Unit tests on synthetic maps; the pictures of a real run are checked in
tests/test_scripts.py, on the tiny end-to-end run of the run scripts."""
from __future__ import annotations

import math
import sys
import types

import cv2
import numpy as np
import pytest
import torch

from wsol.architectures import IMAGENET_MEAN, IMAGENET_STD
from wsol import visualize as viz


def read_rgb(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def blob_map(size=224, box=(60, 80, 140, 160)) -> np.ndarray:
    """A map that is 1 inside ``box`` (x0, y0, x1, y1, inclusive) and 0.05 outside."""
    scoremap = np.full((size, size), 0.05, np.float32)
    x0, y0, x1, y1 = box
    scoremap[y0:y1 + 1, x0:x1 + 1] = 1.0
    return scoremap


def normalised_batch(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> ImageNet-normalised [B, 3, H, W]."""
    x = torch.from_numpy(pixels).float().permute(0, 3, 1, 2) / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_denormalize_inverts_the_loader_normalisation():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    back = viz.denormalize(normalised_batch(pixels))
    assert back.dtype == np.uint8 and back.shape == pixels.shape
    assert np.abs(back.astype(int) - pixels).max() <= 1
    assert viz.denormalize(normalised_batch(pixels), size=64).shape == (2, 64, 64, 3)


def test_predicted_box_is_the_largest_contour_at_the_threshold():
    scoremap = blob_map(box=(60, 80, 140, 160))
    scoremap[10:20, 10:20] = 0.9  # a smaller second blob
    # wsolevaluation's boxes: (x, y, x + w, y + h) of OpenCV's bounding rect
    assert viz.predicted_box(scoremap, 0.2).tolist() == [60, 80, 141, 161]
    assert viz.predicted_box(np.zeros((224, 224), np.float32), 0.2).tolist() == [0, 0, 0, 0]
    assert viz.best_iou([60, 80, 140, 160], [[0, 0, 5, 5], [60, 80, 140, 160]]) == 1.0
    assert math.isnan(viz.best_iou([0, 0, 1, 1], []))


def test_render_overlay_draws_ground_truth_green_and_prediction_red():
    image = np.full((224, 224, 3), 128, np.uint8)
    picture, info = viz.render_overlay(image, blob_map(box=(60, 80, 140, 160)),
                                       gt_boxes=[[20, 30, 200, 190]], loc_threshold=0.2)
    assert picture.shape == (224, 224, 3)
    assert info["pred_box"] == [60, 80, 141, 161]
    expected = (82 * 82) / (181 * 161)  # inclusive pixels
    assert info["box_iou"] == pytest.approx(expected) and info["iou"] == info["box_iou"]
    # The GT box edge is green and the predicted box edge red.
    assert tuple(picture[100, 20]) == viz.GT_COLOR
    assert tuple(picture[120, 60]) == viz.PRED_COLOR
    # Inside the blob the heatmap is hot (red-ish), outside cold (blue-ish).
    hot, cold = picture[120, 100].astype(int), picture[5, 5].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]
    captioned, _ = viz.render_overlay(image, blob_map(), gt_boxes=[[20, 30, 200, 190]],
                                      caption=["cam | sigmoid", "IoU 0.50"])
    assert captioned.shape[0] > 224 and captioned.shape[1] == 224


def test_render_overlay_with_a_mask_draws_contours_and_mask_iou():
    image = np.full((224, 224, 3), 128, np.uint8)
    gt = np.zeros((224, 224), np.uint8)
    gt[80:161, 60:141] = 1
    gt[0:10, :] = 255  # ignored pixels count for neither side
    picture, info = viz.render_overlay(image, blob_map(box=(60, 80, 140, 160)), gt_mask=gt)
    assert info["mask_iou"] == pytest.approx(1.0) and "box_iou" not in info
    assert tuple(picture[120, 60]) == viz.GT_COLOR  # GT drawn over a matching prediction
    half = blob_map(box=(60, 120, 140, 200))  # prediction shifted down by 40 px
    picture, info = viz.render_overlay(image, half, gt_mask=gt)
    assert info["mask_iou"] == pytest.approx((81 * 41) / (81 * 121))
    assert "pred_box" not in info  # mask datasets: contours, no box
    greenish = (picture[:, :, 1] > 200) & (picture[:, :, 0] < 100) & (picture[:, :, 2] < 100)
    reddish = (picture[:, :, 0] > 200) & (picture[:, :, 1] < 100) & (picture[:, :, 2] < 100)
    assert greenish.any() and reddish.any()
    assert math.isnan(viz.mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), np.uint8)))


def make_collector(count=3, masks=False):
    gt_boxes = {f"img{i}": [[60, 80, 140, 160]] for i in range(6)}
    gt = np.zeros((224, 224), np.uint8)
    gt[80:161, 60:141] = 1
    return viz.OverlayCollector(count, loc_threshold=0.2, size=224,
                                class_names=["cat", "dog"],
                                gt_boxes=None if masks else gt_boxes,
                                gt_mask=(lambda image_id: gt) if masks else None)


def feed(collector, batches=2, batch_size=2):
    rng = np.random.default_rng(1)
    for b in range(batches):
        ids = [f"img{b * batch_size + i}" for i in range(batch_size)]
        images = normalised_batch(rng.integers(0, 256, (batch_size, 96, 96, 3), dtype=np.uint8))
        labels = torch.tensor([0, 1][:batch_size])
        preds = torch.tensor([0, 0][:batch_size])
        maps = torch.from_numpy(np.stack([blob_map()] * batch_size))
        for branch in ("softmax", "sigmoid"):
            scale = 1.0 if branch == "sigmoid" else 0.5
            collector.add(branch, images, labels, preds, ids,
                          {"cam": maps * scale, "gradcam": maps.flip(-1)})


def test_collector_keeps_the_first_n_images_of_every_method_and_branch():
    collector = make_collector(count=3)
    feed(collector, batches=3)
    assert collector.image_ids == ["img0", "img1", "img2"] and collector.full
    assert set(collector.maps) == {(m, b) for m in ("cam", "gradcam")
                                   for b in ("softmax", "sigmoid")}
    for store in collector.maps.values():
        assert list(store) == ["img0", "img1", "img2"]
    assert collector.images["img0"].shape == (224, 224, 3)  # upsampled from 96
    assert collector.labels == {"img0": 0, "img1": 1, "img2": 0}


def test_collector_writes_overlays_per_method_and_branch_and_a_grid(tmp_path):
    collector = make_collector(count=3)
    feed(collector)
    stale = tmp_path / "cam_sigmoid" / "99_old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    written = collector.write(str(tmp_path))
    assert not stale.exists()  # the folder shows this run only
    for method in ("cam", "gradcam"):
        for branch in ("softmax", "sigmoid"):
            paths = written[f"overlays/{method}_{branch}"]
            assert [p.split("/")[-1] for p in paths] == ["00_img0.png", "01_img1.png",
                                                         "02_img2.png"]
            picture = read_rgb(paths[0])
            assert picture.shape[1] == 224 and picture.shape[0] > 224  # caption on top
        grid = read_rgb(written[f"grids/{method}"][0])
        # three rows (image, softmax, sigmoid) of captioned 224-px tiles, 3 columns
        assert grid.shape[0] > 3 * 224 and grid.shape[1] > 3 * 224


def test_collector_mask_overlays(tmp_path):
    collector = make_collector(count=2, masks=True)
    feed(collector, batches=1)
    written = collector.write(str(tmp_path))
    picture, info = collector.render("cam", "sigmoid", "img0")
    assert info["mask_iou"] == pytest.approx(1.0)
    assert len(written["overlays/cam_sigmoid"]) == 2


def fake_results(with_masks=True):
    thresholds = [i / 100 for i in range(100)]
    box = {"thresholds": thresholds}
    for iou, peak in ((30, 80.0), (50, 60.0), (70, 30.0)):
        box[f"MaxBoxAccV2@{iou}"] = [peak * math.sin(math.pi * t) for t in thresholds]
    box["MaxBoxAcc@50"] = box["MaxBoxAccV2@50"]
    rows = []
    for branch in ("softmax", "sigmoid"):
        row = {"method": "cam", "branch": branch, "clamp": branch == "sigmoid",
               "MaxBoxAccV2": 56.7, "loc_threshold": 0.2, "curves": box}
        if with_masks:
            recall = [1 - t for t in thresholds]
            precision = [0.3 + 0.6 * t for t in thresholds]
            precision[-1] = float("nan")  # nothing above the top threshold
            row.update({"PxAP": 61.0, "mask_curves": {"thresholds": thresholds,
                                                      "precision": precision,
                                                      "recall": recall}})
        rows.append(row)
    return {"dataset": "SYNTH", "architecture": "resnet18", "split": "test", "rows": rows}


def test_write_plots_draws_box_and_pr_curves(tmp_path):
    written = viz.write_plots(fake_results(), str(tmp_path))
    assert set(written) == {"plots/box_accuracy_cam", "plots/pxap_pr_cam"}
    for (path,) in written.values():
        picture = read_rgb(path)
        assert picture.shape[0] > 300 and picture.std() > 10  # not blank
    boxes_only = viz.write_plots(fake_results(with_masks=False), str(tmp_path / "b"))
    assert set(boxes_only) == {"plots/box_accuracy_cam"}
    assert viz.write_plots({"rows": [{"method": "cam", "branch": "softmax"}]},
                           str(tmp_path / "c")) == {}


def test_visualize_cli_redraws_curves_from_json(tmp_path, capsys):
    import json
    path = tmp_path / "results_test.json"
    path.write_text(json.dumps(fake_results()))
    assert viz.main([str(path)]) == 0
    assert (tmp_path / "plots" / "test" / "box_accuracy_cam.png").is_file()
    assert viz.main([str(tmp_path / "missing.json")]) == 2


class FakeTracker:
    def __init__(self, run):
        self.run = run
        self.logged = []

    def log(self, values, step=None):
        self.logged.append(values)


def test_pictures_go_to_wandb_only_when_it_runs(tmp_path, monkeypatch):
    png = viz.save_png(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    off = FakeTracker(run=None)
    viz.log_pictures(off, {"plots/x": [png]})
    assert off.logged == []
    fake_wandb = types.SimpleNamespace(Image=lambda path, caption=None: ("image", path, caption))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    on = FakeTracker(run=object())
    viz.log_pictures(on, {"plots/x": [png], "empty": []})
    assert on.logged == [{"plots/x": [("image", png, "a.png")]}]


def test_write_pictures_follows_the_flags(tmp_path):
    pictures = viz.write_pictures(str(tmp_path), "test", fake_results(), plots=True,
                                  overlays=False, tracker=FakeTracker(None))
    assert set(pictures) == {"plots/box_accuracy_cam", "plots/pxap_pr_cam"}
    collector = make_collector(count=2)
    feed(collector, batches=1)
    collector.write(str(tmp_path / "overlays" / "test"))
    pictures = viz.write_pictures(str(tmp_path), "test", fake_results(), plots=False,
                                  overlays=True)
    assert "grids/cam" in pictures and len(pictures["overlays/cam_sigmoid"]) == 2


def test_class_names(tmp_path):
    plain = tmp_path / "names.txt"
    plain.write_text("cat\ndog\n")
    assert viz.class_names_for(None, 3, str(plain)) == ["cat", "dog", "class 2"]
    cub = tmp_path / "classes.txt"
    cub.write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    assert viz.read_class_names(str(cub)) == ["001.Black_footed_Albatross",
                                              "002.Laysan_Albatross"]
    from wsol.data.synth import synth_class_names
    assert viz.class_names_for("SYNTH", 10) == synth_class_names(10)
    assert viz.class_names_for("CUB", 2) == ["class 0", "class 1"]
    names = viz.class_names_for("ILSVRC", 1000)
    assert len(names) == 1000 and names[0] != "class 0"


def test_long_captions_wrap_instead_of_being_cut_off():
    import cv2
    text = "gradcam | sigmoid (ours) | sigmoid score 0.93 explains class twelve"
    lines = viz._wrap(text, 96, 0.4)
    assert len(lines) > 1 and " ".join(lines) == text  # every word, in order
    assert all(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] <= 90
               for line in lines)
    image = np.zeros((40, 96, 3), np.uint8)
    assert viz.add_caption(image, [text]).shape[0] > viz.add_caption(image, ["short"]).shape[0]


def test_visualize_cli_keeps_every_runs_pictures_in_one_folder(tmp_path, capsys):
    import json
    paths = []
    for name in ("run_a", "run_b"):
        folder = tmp_path / name
        folder.mkdir()
        paths.append(folder / "results_test.json")
        paths[-1].write_text(json.dumps({**fake_results(), "experiment": name}))
    assert viz.main([*map(str, paths), "--output", str(tmp_path / "plots")]) == 0
    written = capsys.readouterr().out.split()
    assert len(written) == len(set(written)) == 4
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "run_a_box_accuracy_cam.png", "run_a_pxap_pr_cam.png",
        "run_b_box_accuracy_cam.png", "run_b_pxap_pr_cam.png"]


def test_plot_titles_name_the_experiment(tmp_path, monkeypatch):
    titles = []
    original = viz._finish_plot
    monkeypatch.setattr(viz, "_finish_plot",
                        lambda plt, fig, ax, path, title, **kw: titles.append(title) or
                        original(plt, fig, ax, path, title, **kw))
    viz.write_plots({**fake_results(), "experiment": "my_run"}, str(tmp_path))
    assert titles and all("my_run" in t for t in titles)

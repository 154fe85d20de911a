"""Tests of evaluation.py: wsolevaluation's behaviours restated as our own
cases, and the fast evaluator against straightforward per-threshold
references (cv2.findContours per threshold) on many maps."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

import evaluation as ev
from data_loaders import configure_metadata
from wsol.protocol import contour_box, contours_above, quantise
from wsol.metrics import _box_kernels as kernels


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def write_box_metadata(folder, boxes: dict, sizes: dict, labels: dict | None = None):
    """Metadata files for images with boxes; returns configure_metadata()."""
    os.makedirs(folder, exist_ok=True)
    ids = list(boxes)
    with open(os.path.join(folder, "image_ids.txt"), "w") as f:
        f.writelines(f"{i}\n" for i in ids)
    with open(os.path.join(folder, "class_labels.txt"), "w") as f:
        f.writelines(f"{i},{(labels or {}).get(i, 0)}\n" for i in ids)
    with open(os.path.join(folder, "image_sizes.txt"), "w") as f:
        f.writelines(f"{i},{sizes[i][0]},{sizes[i][1]}\n" for i in ids)
    with open(os.path.join(folder, "localization.txt"), "w") as f:
        for i in ids:
            f.writelines(f"{i},{b[0]},{b[1]},{b[2]},{b[3]}\n" for b in boxes[i])
    return configure_metadata(str(folder))


def box_evaluator(metadata, cls=ev.BoxEvaluator, thresholds=None, **kwargs):
    kwargs.setdefault("iou_threshold_list", [30, 50, 70])
    return cls(metadata=metadata, dataset_name="TEST", split="test",
               cam_threshold_list=(thresholds if thresholds is not None
                                   else ev.make_threshold_list(0.01)),
               mask_root=None, **kwargs)


def random_gt(rng, size, count):
    boxes = []
    for _ in range(count):
        x0, x1 = sorted(rng.integers(0, size, 2))
        y0, y1 = sorted(rng.integers(0, size, 2))
        boxes.append([int(x0), int(y0), int(x1), int(y1)])
    return boxes


def structured_map(rng, size):
    """Maps with the shapes that make contours subtle: plateaus, rings with
    holes, one-pixel-wide rings and tails, nested peaks in pits, diagonal
    (8-connected only) structures, checkerboards, noise and smooth maps."""
    yy, xx = np.mgrid[:size, :size]
    kind = rng.integers(0, 9)
    if kind == 0:
        m = rng.integers(0, 4, (size, size)) * 80
    elif kind == 1:
        r = np.hypot(yy - rng.uniform(0, size), xx - rng.uniform(0, size))
        m = (np.sin(r * rng.uniform(0.3, 1.5)) + 1) * 127
    elif kind == 2:
        m = np.zeros((size, size))
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(0, size, 2)
            s = int(rng.integers(2, max(3, size // 2)))
            v = rng.integers(50, 256)
            m[y0:y0 + s, x0] = v
            m[y0:y0 + s, min(x0 + s, size - 1)] = v
            m[y0, x0:x0 + s + 1] = v
            m[min(y0 + s, size - 1), x0:x0 + s + 1] = v
            if rng.random() < 0.5:
                m[y0, max(0, x0 - 3):x0] = v
    elif kind == 3:
        d = np.abs(yy - rng.integers(0, size)) + np.abs(xx - rng.integers(0, size))
        m = np.where(d % rng.integers(2, 5) == 0, 200, 30) + rng.integers(0, 2, (size, size)) * 10
    elif kind == 4:
        r = np.hypot(yy - size / 2, xx - size / 2)
        m = np.where(r < size * 0.45, 200, 0)
        m = np.where(r < size * 0.3, 60, m)
        m = np.where(r < size * 0.12, 255, m) + rng.integers(0, 3, (size, size))
    elif kind == 5:
        a, b = rng.integers(1, 3, 2)
        m = ((yy // a + xx // b) % 2) * rng.integers(1, 256) + rng.integers(0, 2, (size, size))
    elif kind == 6:
        low = rng.random((5, 5))
        m = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 7:
        m = rng.integers(0, 256, (size, size))
    else:
        m = np.zeros((size, size))
    return ev.normalize_scoremap(np.clip(m, 0, None).astype(np.float64))


def cam_like_map(rng, size):
    low = rng.standard_normal((14, 14))
    if rng.random() < 0.3:
        low = np.maximum(low, 0)
    return ev.normalize_scoremap(cv2.resize(low, (size, size),
                                            interpolation=cv2.INTER_CUBIC))


def reference_levels(q, gt, levels):
    """Per level: best IoU over all contour boxes and the largest contour's
    box, straight from OpenCV (the protocol as written)."""
    height, width = q.shape
    out = {}
    for li in levels:
        contours = contours_above(q, li - 1)
        if len(contours) == 0:
            boxes, single = [[0, 0, 0, 0]], [0, 0, 0, 0]
        else:
            boxes = [contour_box(c, width, height) for c in contours]
            single = contour_box(max(contours, key=cv2.contourArea), width, height)
        best = ev.calculate_multiple_iou(np.array(boxes), np.array(gt)).max()
        out[li] = (best, single)
    return out


# --------------------------------------------------------------------------
# IoU, boxes, thresholds
# --------------------------------------------------------------------------

class TestIoU:
    def test_zero_boxes_are_one_pixel_and_overlap(self):
        ious = ev.calculate_multiple_iou(np.zeros((2, 4), int), np.zeros((4, 4), int))
        assert isinstance(ious, np.ndarray)
        assert ious.dtype == np.float64
        assert ious.shape == (2, 4)
        assert (ious == 1.0).all()

    def test_box_convention_violation_raises(self):
        with pytest.raises(RuntimeError):
            ev.calculate_multiple_iou(np.array([[3, 3, 2, 5]]), np.array([[0, 0, 1, 1]]))
        with pytest.raises(RuntimeError):
            ev.calculate_multiple_iou(np.array([[-1, 0, 2, 5]]), np.array([[0, 0, 1, 1]]))

    def test_identity_and_disjoint(self):
        boxes = np.array([[0, 0, 2, 2], [5, 5, 9, 6]])
        assert (ev.calculate_multiple_iou(boxes, boxes) == np.eye(2)).all()

    def test_realistic_value_inclusive_pixels(self):
        # a: x 2..6 (5 px), y 0..3 (4 px) = 20; b: x 4..9 (6), y 2..4 (3) = 18;
        # overlap x 4..6 (3) x y 2..3 (2) = 6 -> 6 / (20 + 18 - 6).
        iou = ev.calculate_multiple_iou(np.array([[2, 0, 6, 3]]), np.array([[4, 2, 9, 4]]))
        assert iou[0, 0] == pytest.approx(6 / 32)

    def test_kernel_iou_matches(self):
        rng = np.random.default_rng(0)
        for _ in range(200):
            a, b = random_gt(rng, 30, 2)
            assert kernels.box_iou(*a, *b) == ev.calculate_multiple_iou(
                np.array([a]), np.array([b]))[0, 0]


class TestResize:
    def test_truncation(self):
        # 3 * 50 / 20 = 7.5 -> 7; 9 * 30 / 40 = 6.75 -> 6; ...
        assert ev.resize_bbox((3, 9, 15, 39), (20, 40), (50, 30)) == (7, 6, 37, 29)

    def test_identity_and_degenerate(self):
        assert ev.resize_bbox((4, 4, 4, 4), (10, 10), (10, 10)) == (4, 4, 4, 4)

    def test_evaluator_truncates_gt(self, tmp_path):
        md = write_box_metadata(tmp_path, {"a.jpg": [[10.7, 99.9, 333.0, 299.0]]},
                                {"a.jpg": (500, 300)})
        e = box_evaluator(md)
        # x: 10.7*224/500 = 4.79 -> 4; y: 99.9*224/300 = 74.59 -> 74 ...
        assert e.gt_bboxes["a.jpg"].tolist() == [[4, 74, 149, 223]]
        # wsolevaluation's other public attributes, for scripts written against it.
        assert e.original_bboxes == {"a.jpg": [[10.7, 99.9, 333.0, 299.0]]}
        assert e.image_sizes == {"a.jpg": (500, 300)} and e.image_ids == ["a.jpg"]
        assert e.resize_length == 224 and e.cnt == 0


def test_threshold_list_construction():
    assert len(ev.make_threshold_list(0.001)) == len(np.arange(0, 1, 0.001))
    assert ev.make_threshold_list(0.25) == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError):
        ev.make_threshold_list(0)


class TestBoxesFromScoremaps:
    thresholds = [0.0, 0.25, 0.5, 0.75]

    def test_zero_map_gives_zero_boxes(self):
        boxes, counts = ev.compute_bboxes_from_scoremaps(np.zeros((3, 4)), self.thresholds)
        assert [b.tolist() for b in boxes] == [[[0, 0, 0, 0]]] * 4
        assert counts == [1, 1, 1, 1]

    def test_unimodal(self):
        # array[y][x]; quantised: .1 -> 25, .5 -> 127, .7 -> 178, .6 -> 153,
        # .3 -> 76, 1 -> 255; levels int(t * 255) = 0, 63, 127, 191.
        scoremap = np.array([[0.0, 0.1, 0.1, 0.0, 0.0],
                             [0.0, 0.5, 0.7, 0.5, 0.0],
                             [0.0, 0.5, 1.0, 0.6, 0.3],
                             [0.0, 0.0, 0.5, 0.0, 0.0]])
        boxes, _ = ev.compute_bboxes_from_scoremaps(scoremap, self.thresholds)
        # x1 = max x + 1 (boundingRect's x + w), clipped to width - 1.
        assert [b.tolist() for b in boxes] == [[[1, 0, 4, 3]], [[1, 1, 4, 3]],
                                               [[2, 1, 4, 3]], [[2, 2, 3, 3]]]

    def test_multimodal_largest_and_all_contours(self):
        scoremap = np.array([[0.9, 0.9, 0.0, 0.0, 0.0, 0.0],
                             [0.9, 0.0, 0.0, 0.4, 0.4, 0.0],
                             [0.0, 0.0, 0.0, 0.4, 1.0, 0.0],
                             [0.2, 0.0, 0.0, 0.0, 0.0, 0.0]])
        # Areas: the 2x2 block 1, the L of 0.9s 0.5, single pixels 0.
        boxes, _ = ev.compute_bboxes_from_scoremaps(scoremap, self.thresholds)
        assert [b.tolist() for b in boxes] == [[[3, 1, 5, 3]], [[3, 1, 5, 3]],
                                               [[0, 0, 2, 2]], [[0, 0, 2, 2]]]
        boxes, counts = ev.compute_bboxes_from_scoremaps(scoremap, self.thresholds,
                                                         multi_contour_eval=True)
        assert counts == [3, 2, 2, 2]
        assert sorted(boxes[0].tolist()) == [[0, 0, 2, 2], [0, 3, 1, 3], [3, 1, 5, 3]]
        assert sorted(boxes[2].tolist()) == [[0, 0, 2, 2], [4, 2, 5, 3]]

    def test_hole_contour_counts_as_a_box(self):
        # Ring two pixels wide (0.8) around a 2x2 pit (0.1) in an 8x8 map.
        scoremap = np.zeros((8, 8))
        scoremap[1:7, 1:7] = 0.8
        scoremap[3:5, 3:5] = 0.1
        boxes, counts = ev.compute_bboxes_from_scoremaps(scoremap, [0.5], True)
        # Outer border: bbox x 1..6 -> [1, 1, 7, 7]; hole border runs through
        # the ring pixels around the pit: x 2..5 -> [2, 2, 6, 6].
        assert counts == [2]
        assert sorted(boxes[0].tolist()) == [[1, 1, 7, 7], [2, 2, 6, 6]]
        # Below the pit's value the ring is filled: one contour.
        boxes, counts = ev.compute_bboxes_from_scoremaps(scoremap, [0.1], True)
        assert counts == [1] and boxes[0].tolist() == [[1, 1, 7, 7]]

    def test_nan_map_raises(self):
        with pytest.raises(ValueError):
            ev.compute_bboxes_from_scoremaps(np.full((3, 3), np.nan), self.thresholds)

    def test_invalid_maps_raise(self):
        with pytest.raises(ValueError):
            ev.compute_bboxes_from_scoremaps(np.full((3, 3), 1.5), self.thresholds)
        with pytest.raises(ValueError):
            ev.compute_bboxes_from_scoremaps(np.zeros((2, 3, 3)), self.thresholds)
        with pytest.raises(TypeError):
            ev.compute_bboxes_from_scoremaps(np.zeros((3, 3), int), self.thresholds)


# --------------------------------------------------------------------------
# The fast kernels against OpenCV, level by level
# --------------------------------------------------------------------------

@pytest.mark.parametrize("capacity_mode", ["records", "filled_sweep", "tiny"])
def test_kernel_levels_equal_opencv(capacity_mode):
    """All 257 levels of hundreds of random and structured maps (sizes 1-40):
    the best IoU over all contours (holes included) and the largest
    contour's box equal OpenCV's, or the level is flagged for OpenCV."""
    rng = np.random.default_rng({"records": 1, "filled_sweep": 2, "tiny": 3}[capacity_mode])
    checked = flagged = 0
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        size = max(height, width)
        q = quantise(structured_map(rng, size))[:height, :width].copy()
        gt = np.array(random_gt(rng, min(height, width), int(rng.integers(1, 4))))
        levels = np.sort(rng.choice(257, int(rng.integers(1, 258)), replace=False))
        needed = np.zeros((1, 257), bool)
        needed[0, levels] = True
        multi, v1_best, v1_first = (np.zeros((1, 257)) for _ in range(3))
        box = np.zeros((1, 257, 4), np.int32)
        flag = np.zeros((1, 257), bool)
        capacity = {"records": 2 * q.size, "filled_sweep": 0,
                    "tiny": int(rng.integers(0, 20))}[capacity_mode]
        kernels.score_maps(q[None], gt[None], np.array([len(gt)]), needed, multi,
                           box, flag, v1_best, v1_first, 0, 1, capacity)
        expected = reference_levels(q, gt, levels)
        for li in levels:
            best, single = expected[li]
            assert multi[0, li] == best, (q, li)
            checked += 1
            if flag[0, li]:
                flagged += 1
                continue
            assert box[0, li].tolist() == single, (q, li)
            ious = ev.calculate_multiple_iou(np.array([single]), gt)[0]
            assert v1_best[0, li] == ious.max() and v1_first[0, li] == ious[0]
    assert flagged < checked / 3


# --------------------------------------------------------------------------
# BoxEvaluator against the straightforward evaluator
# --------------------------------------------------------------------------

def _compare_evaluators(metadata, ids, maps, corrects, thresholds, iou_list,
                        capacity=None, resize_length=224):
    results = []
    for cls in (ev.BoxEvaluator, ev.ReferenceBoxEvaluator):
        e = box_evaluator(metadata, cls, thresholds, iou_threshold_list=iou_list,
                          resize_length=resize_length)
        e.scorer.hole_record_capacity = capacity
        for scoremap, image_id, correct in zip(maps, ids, corrects):
            e.accumulate(scoremap, image_id, correct)
        results.append(e)
    fast, ref = results
    fast_counts, ref_counts = fast.state(), ref.state()
    for key in ref_counts:
        assert np.array_equal(fast_counts[key], ref_counts[key]), key
    for mode in (True, False):
        fast.multi_contour_eval = ref.multi_contour_eval = mode
        assert fast.compute() == ref.compute()
    return fast


@pytest.mark.parametrize("thresholds,iou_list,capacity", [
    (ev.make_threshold_list(0.01), [30, 50, 70], None),
    (ev.make_threshold_list(0.05), [10, 50, 90], 0),
    (list(np.linspace(-0.1, 1.2, 37)), [50], None),
    ([0.2, 0.2, 0.9, 0.1, 0.6], [25, 75], None),
])
def test_fast_equals_reference_small_maps(tmp_path, thresholds, iou_list, capacity):
    """Hundreds of random and structured maps at resize length 40, with
    threshold lists in and out of [0, 1], unsorted and repeated."""
    rng = np.random.default_rng(len(thresholds))
    size, count = 40, 150
    ids = [f"x/{i}.jpg" for i in range(count)]
    boxes = {i: random_gt(rng, size, int(rng.integers(1, 4))) for i in ids}
    md = write_box_metadata(tmp_path, boxes, {i: (size, size) for i in ids})
    maps = [structured_map(rng, size) if k % 2 else cam_like_map(rng, size)
            for k in range(count)]
    corrects = [None if k % 7 == 0 else bool(k % 3) for k in range(count)]
    _compare_evaluators(md, ids, maps, corrects, thresholds, iou_list, capacity,
                        resize_length=size)


def test_fast_equals_reference_224(tmp_path):
    """CAM-like 224 x 224 maps, GT boxes near their peaks, multi-box images."""
    rng = np.random.default_rng(7)
    count = 40
    ids = [f"cam/{i}.jpg" for i in range(count)]
    maps = [cam_like_map(rng, 224) for _ in range(count)]
    boxes = {}
    for image_id, scoremap in zip(ids, maps):
        boxes[image_id] = []
        for _ in range(int(rng.integers(1, 4))):
            ys, xs = np.nonzero(scoremap > rng.uniform(0.2, 0.8))
            boxes[image_id].append([int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())])
    md = write_box_metadata(tmp_path, boxes, {i: (224, 224) for i in ids})
    corrects = [bool(k % 2) for k in range(count)]
    fast = _compare_evaluators(md, ids, maps, corrects, ev.make_threshold_list(0.01),
                               [30, 50, 70])
    summary = fast.summary()
    assert 0 < summary["MaxBoxAccV2"] <= 100


# --------------------------------------------------------------------------
# BoxEvaluator behaviour
# --------------------------------------------------------------------------

@pytest.fixture
def two_box_metadata(tmp_path):
    # Image "a": first GT box away from the blob, second one on it.
    boxes = {"a.jpg": [[150, 150, 200, 200], [20, 30, 80, 90]],
             "b.jpg": [[20, 30, 80, 90]]}
    return write_box_metadata(tmp_path, boxes, {k: (224, 224) for k in boxes})


def blob_map(x0=20, y0=30, x1=80, y1=90):
    scoremap = np.zeros((224, 224))
    scoremap[y0:y1 + 1, x0:x1 + 1] = 1.0
    return scoremap


class TestBoxEvaluator:
    def test_perfect_box_and_loc_variants(self, two_box_metadata):
        e = box_evaluator(two_box_metadata, loc_threshold=0.2)
        e.accumulate(blob_map(), "a.jpg", correct=True)
        e.accumulate(blob_map(), "b.jpg", correct=False)
        s = e.summary()
        # Box [20, 30, 81, 91] vs GT [20, 30, 80, 90]: IoU 61*61/(62*62) > .7.
        assert s["MaxBoxAccV2@70"] == 100.0 and s["MaxBoxAcc"] == 100.0
        assert s["GT-known Loc"] == 100.0 and s["Top-1 Loc"] == 50.0
        # The public method's variant only looks at the first GT box.
        assert s["GT-known Loc (first box)"] == 50.0
        assert s["Top-1 Loc (first box)"] == 0.0
        assert s["num_images"] == 2 and s["num_top1_unknown"] == 0
        first = box_evaluator(two_box_metadata, first_box_only=True)
        first.accumulate(blob_map(), "a.jpg", correct=True)
        assert first.summary()["GT-known Loc"] == 0.0

    def test_compute_returns_wsolevaluation_list(self, two_box_metadata):
        e = box_evaluator(two_box_metadata, multi_contour_eval=False)
        e.accumulate(blob_map(), "b.jpg")
        result = e.compute()
        assert isinstance(result, list) and len(result) == 3
        assert all(isinstance(v, np.floating) for v in result)
        assert e.cnt == 1 and set(e.num_correct) == {30, 50, 70}

    def test_summary_keys_and_curves(self, two_box_metadata):
        e = box_evaluator(two_box_metadata, iou_threshold_list=[30, 70])
        e.accumulate(blob_map(), "b.jpg", True)
        s = e.summary()
        for key in ("MaxBoxAccV2", "MaxBoxAccV2@30", "MaxBoxAccV2@70", "MaxBoxAcc",
                    "GT-known Loc", "Top-1 Loc", "GT-known Loc (first box)",
                    "Top-1 Loc (first box)", "best_threshold@30", "best_threshold@70",
                    "curves", "num_images", "num_nan_maps", "num_constant_maps"):
            assert key in s, key
        assert s["MaxBoxAccV2"] == pytest.approx((s["MaxBoxAccV2@30"] + s["MaxBoxAccV2@70"]) / 2)
        assert len(s["curves"]["thresholds"]) == 100
        assert len(s["curves"]["MaxBoxAccV2@30"]) == 100
        assert s["best_threshold@30"] == 0.0

    def test_nan_map_raises_and_batch_counts(self, two_box_metadata):
        e = box_evaluator(two_box_metadata)
        with pytest.raises(ValueError):
            e.accumulate(np.full((224, 224), np.nan), "a.jpg")
        with pytest.raises(ValueError):
            e.accumulate(np.full((224, 224), 2.0), "a.jpg")
        with pytest.raises(ValueError):
            e.accumulate(np.zeros((100, 100)), "a.jpg")
        with pytest.raises(KeyError):
            e.accumulate(np.zeros((224, 224)), "unknown.jpg")
        maps = torch.stack([torch.full((224, 224), float("nan")),
                            torch.zeros(224, 224),
                            torch.from_numpy(blob_map()).float()])
        e.accumulate_batch(maps, ["a.jpg", "a.jpg", "b.jpg"], torch.tensor([True, True, True]))
        s = e.summary()
        assert s["num_nan_maps"] == 1 and s["num_constant_maps"] == 1
        assert s["num_images"] == 3
        assert s["GT-known Loc"] == pytest.approx(100 / 3)

    def test_batch_raw_maps_are_normalised(self, two_box_metadata):
        raw = torch.from_numpy(blob_map() * 7 + 3)[None]
        raw[0, 0, 0] = float("nan")
        e = box_evaluator(two_box_metadata)
        e.accumulate_batch(raw, ["b.jpg"], normalized=False)
        assert e.num_nan_maps == 1 and e.summary()["MaxBoxAccV2@50"] == 0.0
        e = box_evaluator(two_box_metadata)
        e.accumulate_batch(torch.from_numpy(blob_map() * 7 + 3)[None], ["b.jpg"],
                           [True], normalized=False)
        assert e.summary()["Top-1 Loc"] == 100.0

    def test_batch_equals_single(self, tmp_path):
        rng = np.random.default_rng(3)
        ids = [f"{i}.jpg" for i in range(30)]
        md = write_box_metadata(tmp_path, {i: random_gt(rng, 224, 2) for i in ids},
                                {i: (224, 224) for i in ids})
        maps = np.stack([cam_like_map(rng, 224) for _ in ids])
        corrects = rng.random(len(ids)) < 0.5
        single, batched = box_evaluator(md), box_evaluator(md)
        for m, i, c in zip(maps, ids, corrects):
            single.accumulate(m, i, bool(c))
        batched.accumulate_batch(torch.from_numpy(maps[:10]), ids[:10],
                                 torch.from_numpy(corrects[:10]))
        batched.accumulate_batch(torch.from_numpy(maps[10:]), ids[10:], list(corrects[10:]))
        a, b = single.state(), batched.state()
        assert all(np.array_equal(a[k], b[k]) for k in a)

    def test_counts_merge_across_ranks(self, tmp_path):
        rng = np.random.default_rng(4)
        ids = [f"{i}.jpg" for i in range(20)]
        md = write_box_metadata(tmp_path, {i: random_gt(rng, 224, 1) for i in ids},
                                {i: (224, 224) for i in ids})
        maps = [cam_like_map(rng, 224) for _ in ids]
        whole, rank0, rank1 = box_evaluator(md), box_evaluator(md), box_evaluator(md)
        for k, (m, i) in enumerate(zip(maps, ids)):
            whole.accumulate(m, i, True)
            (rank0 if k % 2 else rank1).accumulate(m, i, True)
        rank0.merge(rank1)
        assert rank0.summary() == whole.summary()
        with pytest.raises(ValueError):
            box_evaluator(md, iou_threshold_list=[50]).load_state(whole.state())


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------

def test_normalize_scoremap_numpy_and_torch_agree():
    rng = np.random.default_rng(5)
    cams = rng.standard_normal((4, 16, 16))
    cams[1] = 3.0
    cams[2, 3, 3] = np.nan
    expected = np.stack([ev.normalize_scoremap(c.copy()) for c in cams])
    got = ev.normalize_maps(torch.from_numpy(cams)).numpy()
    assert np.array_equal(expected, got)
    assert (got[1] == 0).all() and (got[2] == 0).all()
    assert got[0].min() == 0 and got[0].max() == 1
    original = cams[0].copy()
    ev.normalize_scoremap(cams[0])
    assert np.array_equal(original, cams[0])


# --------------------------------------------------------------------------
# Masks and PxAP
# --------------------------------------------------------------------------

def _write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array.astype(np.uint8))


@pytest.fixture
def openimages(tmp_path):
    """OpenImages layout: masks under <root>/val/<class>/, a mask file per
    instance and an ignore file per image (first line only)."""
    rng = np.random.default_rng(6)
    mask_root = tmp_path / "OpenImages"
    ids, lines = [], []
    for k in range(4):
        image_id = f"val/c{k % 2}/img{k}.jpg"
        ids.append(image_id)
        height, width = (int(v) for v in rng.integers(150, 400, 2))
        count = 1 + k % 2
        for n in range(count):
            m = np.zeros((height, width))
            y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
            m[y0:y0 + height // 3, x0:x0 + width // 3] = 255
            mask_file = f"val/c{k % 2}/img{k}_m{n}.png"
            _write_png(str(mask_root / mask_file), m)
            ignore_file = ""
            if n == 0:
                ignore = np.zeros((height, width))
                ignore[: height // 2, width // 2:] = 255
                ignore_file = f"val/c{k % 2}/img{k}_ignore.png"
                _write_png(str(mask_root / ignore_file), ignore)
            lines.append(f"{image_id},{mask_file},{ignore_file}\n")
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (meta / "class_labels.txt").write_text("".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
    (meta / "localization.txt").write_text("".join(lines))
    return configure_metadata(str(meta)), str(mask_root), ids


def mask_evaluator(metadata, mask_root, interval=0.01):
    return ev.MaskEvaluator(metadata=metadata, dataset_name="OpenImages", split="val",
                            cam_threshold_list=ev.make_threshold_list(interval),
                            iou_threshold_list=[30, 50, 70], mask_root=mask_root,
                            multi_contour_eval=False)


def wsol_pxap(scoremaps, masks, thresholds):
    """PxAP the way wsolevaluation computes it (float histograms)."""
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(thresholds) + 2)
    false_hist = np.zeros(len(thresholds) + 2)
    for s, m in zip(scoremaps, masks):
        true_hist += np.histogram(s[m == 1], bins=edges)[0]
        false_hist += np.histogram(s[m == 0], bins=edges)[0]
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    non_zero = (tp + fp) != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return (precision[1:] * np.diff(recall))[non_zero[1:]].sum() * 100


class TestMasks:
    def test_get_mask_union_and_ignore(self, openimages):
        metadata, mask_root, ids = openimages
        e = mask_evaluator(metadata, mask_root)
        gt = e.ground_truth
        mask = ev.get_mask(mask_root, gt.mask_paths[ids[1]], gt.ignore_paths[ids[1]])
        assert mask.dtype == np.uint8 and mask.shape == (224, 224)
        assert set(np.unique(mask)) <= {0, 1, 255}
        assert (mask == 1).any() and (mask == 255).any()
        assert len(gt.mask_paths[ids[1]]) == 2

    def test_perfect_map_gives_100(self, openimages):
        metadata, mask_root, ids = openimages
        for ignore_score in (0.0, 1.0):
            e = mask_evaluator(metadata, mask_root)
            for image_id in ids:
                mask = e._mask(image_id)
                scoremap = (mask == 1).astype(np.float64)
                scoremap[mask == 255] = ignore_score
                e.accumulate(scoremap, image_id)
            assert e.compute() == 100.0

    def test_constant_map_gives_foreground_share(self, openimages):
        metadata, mask_root, ids = openimages
        e = mask_evaluator(metadata, mask_root)
        mask = e._mask(ids[0])
        e.accumulate(np.full((224, 224), 0.5), ids[0])
        fg, bg = (mask == 1).sum(), (mask == 0).sum()
        assert e.compute() == pytest.approx(100 * fg / (fg + bg))

    def test_equals_wsolevaluation_formula_and_batch(self, openimages):
        metadata, mask_root, ids = openimages
        rng = np.random.default_rng(8)
        maps = [cam_like_map(rng, 224) for _ in ids]
        for interval in (0.01, 0.001, 0.037):
            e = mask_evaluator(metadata, mask_root, interval)
            for m, i in zip(maps, ids):
                e.accumulate(m, i)
            masks = [e._mask(i) for i in ids]
            expected = wsol_pxap(maps, masks, ev.make_threshold_list(interval))
            assert e.compute() == expected  # bit for bit
            batched = mask_evaluator(metadata, mask_root, interval)
            batched.accumulate_batch(torch.from_numpy(np.stack(maps)), ids)
            assert batched.compute() == expected
            assert batched.state()["gt_true_score_hist"].dtype == np.int64
        s = e.summary()
        assert s["num_images"] == len(ids)
        assert len(s["curves"]["precision"]) == len(s["curves"]["thresholds"])

    def test_masks_cached_after_first_load(self, openimages, tmp_path):
        metadata, mask_root, ids = openimages
        e = mask_evaluator(metadata, mask_root)
        first = e._mask(ids[0])
        for path in e.ground_truth.mask_paths[ids[0]]:
            os.remove(os.path.join(mask_root, path))
        assert np.array_equal(e._mask(ids[0]), first)

    def test_synth_masks_without_ignore(self, tmp_path):
        """SYNTH: localization.txt has boxes, localization_masks.txt masks
        with an empty ignore field."""
        meta = tmp_path / "meta"
        boxes = {"s/0.png": [[10, 10, 50, 50]]}
        md = write_box_metadata(meta, boxes, {"s/0.png": (64, 64)})
        m = np.zeros((64, 64))
        m[10:51, 10:51] = 255
        _write_png(str(tmp_path / "SYNTH" / "s" / "0_mask.png"), m)
        (meta / "localization_masks.txt").write_text("s/0.png,s/0_mask.png,\n")
        e = ev.MaskEvaluator(metadata=md, dataset_name="SYNTH", split="test",
                             cam_threshold_list=ev.make_threshold_list(0.01),
                             mask_root=str(tmp_path / "SYNTH"))
        mask = e._mask("s/0.png")
        assert (mask != 255).all() and (mask == 1).any()
        e.accumulate((mask == 1).astype(np.float64), "s/0.png")
        assert e.compute() == 100.0

    def test_no_positive_raises(self, openimages):
        metadata, mask_root, ids = openimages
        e = mask_evaluator(metadata, mask_root)
        e.accumulate(np.zeros((224, 224)), ids[0])
        e.gt_true_score_hist[:] = 0
        with pytest.raises(RuntimeError):
            e.compute()


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def test_cli_scores_saved_maps(tmp_path, capsys):
    rng = np.random.default_rng(9)
    ids = ["001.Bird/a.jpg", "002.Bird/b.jpg"]
    write_box_metadata(tmp_path / "metadata" / "CUB" / "test",
                       {i: random_gt(rng, 224, 1) for i in ids}, {i: (224, 224) for i in ids})
    scoremaps = tmp_path / "scoremaps"
    for image_id in ids:
        # wsolevaluation saves np.save(<root>/<image_id>) -> "<image_id>.npy".
        os.makedirs(os.path.dirname(scoremaps / image_id), exist_ok=True)
        np.save(str(scoremaps / image_id), cam_like_map(rng, 224))
    output = tmp_path / "out.json"
    args = ["--scoremap_root", str(scoremaps), "--metadata_root", str(tmp_path / "metadata"),
            "--mask_root", str(tmp_path / "dataset"), "--dataset_name", "CUB",
            "--split", "test", "--cam_curve_interval", "0.01", "--multi_contour_eval",
            "--iou_threshold_list", "30", "50", "70", "--output_json", str(output)]
    assert ev.main(args) == 0
    row = json.loads(output.read_text())["rows"][0]
    assert row["num_images"] == 2
    assert "MaxBoxAccV2" in capsys.readouterr().out

    os.remove(str(scoremaps / (ids[1] + ".npy")))
    assert ev.main(args) == 2
    assert "missing score map" in capsys.readouterr().err
    assert ev.main(args[:2] + ["--metadata_root", str(tmp_path / "nowhere")] + args[4:]) == 2


@pytest.mark.parametrize("dataset_name", ["SYNTH", "OpenImages"])
def test_cli_on_generated_dataset(tiny_synth_root, tmp_path, dataset_name, capsys):
    """Real layouts from wsol/synth.py: SYNTH (boxes + localization_masks.txt,
    some ignore files empty) scores boxes and PxAP; the same data laid out as
    OpenImages (masks in localization.txt) scores PxAP only."""
    from tests.conftest import copy_as_dataset
    if dataset_name == "SYNTH":
        root = tiny_synth_root
    else:
        root = tmp_path / "root"
        copy_as_dataset(tiny_synth_root, root, dataset_name)
    metadata = configure_metadata(str(root / "metadata" / dataset_name / "test"))
    masks = ev.MaskEvaluator(metadata=metadata, dataset_name=dataset_name, split="test",
                             cam_threshold_list=ev.make_threshold_list(0.01),
                             mask_root=str(root / "dataset" / dataset_name))
    scoremaps = tmp_path / "maps"
    for image_id in masks.ground_truth.mask_paths:
        path = scoremaps / (image_id + ".npy")
        os.makedirs(path.parent, exist_ok=True)
        np.save(path, (masks._mask(image_id) == 1).astype(np.float32))
    output = tmp_path / "summary.json"
    assert ev.main(["--scoremap_root", str(scoremaps),
                    "--metadata_root", str(root / "metadata"),
                    "--mask_root", str(root / "dataset"), "--dataset_name", dataset_name,
                    "--split", "test", "--output_json", str(output)]) == 0
    row = json.loads(output.read_text())["rows"][0]
    assert row["PxAP"] == 100.0
    assert ("MaxBoxAccV2" in row) == (dataset_name == "SYNTH")
    if dataset_name == "SYNTH":
        assert row["Top-1 Loc"] is None  # no classifier verdicts: NaN, written as null
        assert row["GT-known Loc"] > 0

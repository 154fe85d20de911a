"""Intervals and paired differences from resamples of the images
(wsol.metrics.bootstrap): against the Wilson interval of a proportion, slow
per-resample loops that score each resample from scratch, the paired test's
size and power, and the merge of the evaluators of several processes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import evaluation as ev
from tests.test_evaluation import random_gt, structured_map, write_box_metadata
from wsol.metrics import FidelityEvaluator, MaskEvaluator, SegmentationEvaluator
from wsol.metrics.bootstrap import (interval, paired_difference, proportion_samples,
                                   resample_indices, resample_weights)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (centre - half), 100 * (centre + half)


@pytest.mark.parametrize("successes,n", [(300, 1000), (50, 400), (930, 1000)])
def test_the_interval_of_a_proportion_is_wilsons(successes, n):
    flags = np.zeros(n, bool)
    flags[np.random.default_rng(1).permutation(n)[:successes]] = True
    samples = np.concatenate([proportion_samples(w, flags, np.ones(n, bool))
                              for w in resample_weights(n, 4000, seed=7)])
    low, high = interval(samples)
    w_low, w_high = wilson(successes, n)
    assert abs(low - w_low) < 0.6 and abs(high - w_high) < 0.6, (low, high, w_low, w_high)
    assert samples.mean() == pytest.approx(100 * successes / n, abs=0.2)


def test_weights_count_the_drawn_indices():
    for indices, weights in zip(resample_indices(13, 450, 5), resample_weights(13, 450, 5)):
        assert weights.shape == (len(indices), 13)
        for row, drawn in zip(weights, indices):
            np.testing.assert_array_equal(row, np.bincount(drawn, minlength=13))


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    """Images with boxes and CAM-like maps whose hits change with the threshold."""
    rng = np.random.default_rng(11)
    ids = [f"img{i:02d}.jpg" for i in range(24)]
    sizes = {i: (int(rng.integers(80, 300)), int(rng.integers(80, 300))) for i in ids}
    gts = {i: random_gt(rng, min(sizes[i]), int(rng.integers(1, 3))) for i in ids}
    metadata = write_box_metadata(tmp_path_factory.mktemp("boot") / "meta", gts, sizes)
    maps = {i: structured_map(rng, SIZE).astype(np.float64) for i in ids}
    maps = {i: (m - m.min()) / max(m.max() - m.min(), 1e-9) for i, m in maps.items()}
    corrects = {i: bool(rng.random() < 0.6) for i in ids}
    return metadata, ids, maps, corrects


SIZE = 64  # maps scored at 64 x 64 (the GT boxes rescaled to it): a quick slow loop


def box_evaluator(metadata, **kwargs):
    kwargs.setdefault("num_workers", 1)
    return ev.BoxEvaluator(metadata=metadata, dataset_name="T", split="test",
                           resize_length=SIZE,
                           cam_threshold_list=ev.make_threshold_list(0.05),
                           iou_threshold_list=[30, 50, 70], **kwargs)


BOX_METRICS = ("MaxBoxAccV2", "MaxBoxAccV2@30", "MaxBoxAccV2@70", "MaxBoxAcc", "MaxBoxAcc@30",
               "GT-known Loc", "Top-1 Loc", "GT-known Loc (first box)",
               "Top-1 Loc (first box)")


@pytest.mark.parametrize("scorer", ["fast", "reference"])
def test_box_intervals_equal_a_slow_loop_over_the_resamples(boxes, scorer):
    """Each resample scored from scratch (its images accumulated again, a
    repeated image as often as drawn): MaxBoxAccV2 re-takes its maximum."""
    metadata, ids, maps, corrects = boxes
    evaluator = box_evaluator(metadata, per_image=True, scorer=scorer)
    for i in ids:
        evaluator.accumulate(maps[i], i, corrects[i])
    # The point estimates are the samples of the resample that draws every image once.
    once = evaluator.bootstrap_samples(np.ones((1, len(ids)), np.float32))
    summary = evaluator.summary()
    for metric in BOX_METRICS:
        assert once[metric][0] == pytest.approx(summary[metric], abs=1e-9), metric
    weights = next(resample_weights(len(ids), 12, seed=3))
    samples = evaluator.bootstrap_samples(weights)
    for r, drawn in enumerate(next(resample_indices(len(ids), 12, seed=3))):
        slow = box_evaluator(metadata)  # the fast scorer's counts are the reference's
        for k in drawn:
            slow.accumulate(maps[ids[k]], ids[k], corrects[ids[k]])
        expected = slow.summary()
        for metric in BOX_METRICS:
            assert samples[metric][r] == pytest.approx(expected[metric], abs=1e-9), metric


def test_pxap_mious_and_fidelity_intervals_equal_slow_loops(tiny_synth_root, tmp_path):
    metadata = ev.configure_metadata(str(tiny_synth_root / "metadata" / "SYNTH" / "test"))
    mask_root = str(tiny_synth_root / "dataset" / "SYNTH")
    masks = MaskEvaluator(metadata=metadata, dataset_name="SYNTH", split="test",
                          cam_threshold_list=ev.make_threshold_list(0.02), mask_root=mask_root,
                          per_image=True)
    ids = list(masks.ground_truth.image_ids)
    rng = np.random.default_rng(2)
    maps = {i: rng.random((224, 224)) ** 3 for i in ids}
    half = len(ids) // 2  # the per-map path and the batch path both keep per-image results
    for i in ids[:half]:
        masks.accumulate(maps[i], i)
    masks.accumulate_batch(torch.from_numpy(np.stack([maps[i] for i in ids[half:]])),
                           ids[half:])
    assert masks.bootstrap_samples(np.ones((1, len(ids)), np.float32))["PxAP"][0] == \
        pytest.approx(masks.compute(), abs=1e-9)
    weights = next(resample_weights(len(ids), 6, seed=4))
    samples = masks.bootstrap_samples(weights)["PxAP"]
    for r, drawn in enumerate(next(resample_indices(len(ids), 6, seed=4))):
        slow = MaskEvaluator(metadata=metadata, dataset_name="SYNTH", split="test",
                             cam_threshold_list=ev.make_threshold_list(0.02),
                             mask_root=mask_root)
        for k in drawn:
            slow.accumulate(maps[ids[k]], ids[k])
        assert samples[r] == pytest.approx(slow.compute(), abs=1e-9)
    # Fidelity: per-image drops and increases, averaged over the drawn images.
    image_ids = [f"i{k}" for k in range(9)]
    fidelity = FidelityEvaluator(image_ids=image_ids)
    full, masked = torch.rand(9) * 0.9 + 0.05, torch.rand(9) * 0.9 + 0.05
    drop, increase, valid = fidelity.accumulate(full, masked)
    fidelity.image_values[:, :3] = torch.stack([drop, increase, valid], 1).double().numpy()
    drawn = next(resample_indices(9, 3, seed=1))
    samples = fidelity.bootstrap_samples(next(resample_weights(9, 3, seed=1)))
    for r, picks in enumerate(drawn):
        y, o = full[picks].double(), masked[picks].double()
        assert samples["Average Drop"][r] == pytest.approx(
            100 * float(torch.clamp((y - o) / y, min=0).mean()), rel=1e-9)
        assert samples["Increase in Confidence"][r] == pytest.approx(
            100 * float((o > y).double().mean()), rel=1e-9)


def test_seed_miou_intervals_equal_a_slow_loop(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(5)
    ids, lines = [], []
    for k in range(8):
        label = rng.integers(0, 4, (12, 16)).astype(np.uint8)
        label[0, :3] = 255
        Image.fromarray(label, "L").save(tmp_path / f"m{k}.png")
        ids.append(f"x{k}.jpg")
        lines.append(f"x{k}.jpg,m{k}.png")
    (tmp_path / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "segmentation.txt").write_text("\n".join(lines) + "\n")
    metadata = ev.configure_metadata(str(tmp_path))
    maps = {i: (rng.random((3, 12, 16)).astype(np.float32), [0, 1, 2]) for i in ids}

    def evaluator(per_image=False):
        return SegmentationEvaluator(metadata, "T", "train", str(tmp_path), 3, 0.21, per_image)
    seeds = evaluator(per_image=True)
    for i in ids:
        seeds.accumulate(*maps[i], i)
    assert seeds.bootstrap_samples(np.ones((1, 8), np.float32))["mIoU"][0] == \
        pytest.approx(seeds.compute(), abs=1e-9)
    samples = seeds.bootstrap_samples(next(resample_weights(8, 5, seed=2)))["mIoU"]
    for r, drawn in enumerate(next(resample_indices(8, 5, seed=2))):
        slow = evaluator()
        for k in drawn:
            slow.accumulate(*maps[ids[k]], ids[k])
        assert samples[r] == pytest.approx(slow.compute(), abs=1e-9)


def _paired_p(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> tuple:
    n = len(a)
    seen = np.ones(n, bool)
    sa, sb = [], []
    for w in resample_weights(n, resamples, seed):
        sa.append(proportion_samples(w, a, seen))
        sb.append(proportion_samples(w, b, seen))
    return paired_difference(np.concatenate(sa), np.concatenate(sb))


def test_the_paired_test_rejects_a_planted_difference_and_holds_its_size():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.random(n)
    ci, p = _paired_p(base < 0.65, base < 0.50, 1000, 1)  # 15 points apart, paired
    assert p < 0.01 and ci[0] > 0
    rejections = 0
    for simulation in range(200):
        a = rng.random(150) < 0.5
        b = rng.random(150) < 0.5  # no difference
        _, p = _paired_p(a, b, 400, simulation)
        rejections += p < 0.05
    assert 0.02 <= rejections / 200 <= 0.09, rejections


def test_identical_rows_differ_by_nothing():
    samples = np.random.default_rng(0).random(100)
    ci, p = paired_difference(samples, samples)
    assert ci == [0.0, 0.0] and p == 1.0


def test_the_evaluators_of_two_processes_merge_into_one(boxes):
    metadata, ids, maps, corrects = boxes
    whole, first, second = (box_evaluator(metadata, per_image=True) for _ in range(3))
    for k, i in enumerate(ids):
        whole.accumulate(maps[i], i, corrects[i])
        (first if k % 2 else second).accumulate(maps[i], i, corrects[i])
    first.merge(second)
    weights = next(resample_weights(len(ids), 30, seed=9))
    merged, single = first.bootstrap_samples(weights), whole.bootstrap_samples(weights)
    for metric in BOX_METRICS:
        np.testing.assert_array_equal(merged[metric], single[metric], err_msg=metric)

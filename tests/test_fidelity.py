"""Fidelity metrics against numbers computed by hand."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from wsol.metrics.fidelity import (FidelityEvaluator, gaussian_blur,
                           insertion_deletion_auc, masked_images)


def mean_score(images: torch.Tensor) -> torch.Tensor:
    """Toy 'softmax head': class 0 has probability = mean pixel value."""
    m = images.mean(dim=(1, 2, 3))
    return torch.stack([m, 1 - m], dim=1)


# Pixel values 1, .75, .5, .25; saliency ranks them .75, .5, .25, 1.
IMAGE = torch.tensor([[[[1.0, 0.75], [0.5, 0.25]]]])
SALIENCY = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])


def test_average_drop_and_increase_in_confidence():
    e = FidelityEvaluator()
    # Drops: (0.8 - 0.4) / 0.8 = 0.5, none, (0.5 - 0.25) / 0.5 = 0.5, none.
    e.accumulate(torch.tensor([0.8, 0.5]), torch.tensor([0.4, 0.6]))
    e.accumulate(torch.tensor([0.5, 0.2]), torch.tensor([0.25, 0.2]))
    result = e.compute()
    assert result["Average Drop"] == pytest.approx(100 * (0.5 + 0 + 0.5 + 0) / 4)
    # Only 0.6 > 0.5 is an increase (equal scores are not).
    assert result["Increase in Confidence"] == pytest.approx(25.0)
    assert math.isnan(result["Insertion AUC"]) and result["num_images"] == 4
    with pytest.raises(ValueError):
        e.accumulate(torch.tensor([0.0]), torch.tensor([0.1]))


def test_deletion_curve_and_auc_by_hand():
    out = insertion_deletion_auc(mean_score, IMAGE, SALIENCY, torch.tensor([0]),
                                 steps=4, baseline="zeros", insertion_baseline="zeros",
                                 return_curves=True)
    # Mean after removing 0, 1, 2, 3, 4 most salient pixels (.75, .5, .25, 1).
    expected = torch.tensor([[2.5, 1.75, 1.25, 1.0, 0.0]]) / 4
    assert torch.allclose(out["deletion_curve"], expected)
    # Trapezoid over fractions 0, 1/4, ..., 1: (sum - (first + last) / 2) / 4.
    assert out["deletion"].item() == pytest.approx((1.625 - 0.3125) / 4)
    insertion = torch.tensor([[0.0, 0.75, 1.25, 1.5, 2.5]]) / 4
    assert torch.allclose(out["insertion_curve"], insertion)
    assert out["insertion"].item() == pytest.approx((1.5 - 0.3125) / 4)


def test_steps_take_equal_fractions_and_class_targets():
    out = insertion_deletion_auc(mean_score, IMAGE, SALIENCY, torch.tensor([1]),
                                 steps=2, baseline="zeros", which=("deletion",),
                                 return_curves=True)
    # Class 1 = 1 - mean: curve 1 - [.625, .3125, 0].
    assert torch.allclose(out["deletion_curve"], torch.tensor([[0.375, 0.6875, 1.0]]))
    assert out["deletion"].item() == pytest.approx((2.0625 - 0.6875) / 2)
    assert "insertion" not in out


def test_batched_channels_and_ties():
    images = torch.cat([IMAGE, IMAGE.flip(-1)]).repeat(1, 3, 1, 1)
    saliency = torch.stack([SALIENCY[0], torch.zeros(2, 2)])
    out = insertion_deletion_auc(mean_score, images, saliency, torch.tensor([0, 0]),
                                 steps=4, baseline="zeros", insertion_baseline="zeros",
                                 return_curves=True)
    assert out["deletion"][0].item() == pytest.approx((1.625 - 0.3125) / 4)
    # All-tied saliency: pixel index order (1, .75 | flipped: .75, 1, .25, .5).
    assert torch.allclose(out["deletion_curve"][1],
                          torch.tensor([2.5, 1.75, 0.75, 0.5, 0.0]) / 4)


def test_blur_baseline_and_custom_baseline():
    constant = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(constant), constant)
    blurred = gaussian_blur(torch.rand(2, 3, 16, 16))
    assert blurred.shape == (2, 3, 16, 16)
    out = insertion_deletion_auc(mean_score, IMAGE, SALIENCY, torch.tensor([0]),
                                 steps=4, baseline=torch.tensor(1.0), which=("deletion",),
                                 return_curves=True)
    # Deleted pixels become 1: mean goes up to 1.
    assert out["deletion_curve"][0, -1].item() == pytest.approx(1.0)


def test_masked_images_and_evaluator_auc():
    images = torch.ones(2, 3, 4, 4)
    maps = torch.rand(2, 4, 4)
    assert torch.equal(masked_images(images, maps), maps[:, None].expand(2, 3, 4, 4))
    with pytest.raises(ValueError):
        masked_images(images, torch.rand(2, 5, 4))
    e = FidelityEvaluator()
    e.accumulate_auc(torch.tensor([0.5, 0.7]), torch.tensor([0.1, 0.3]))
    other = FidelityEvaluator()
    other.accumulate_auc(torch.tensor([0.9]), torch.tensor([0.2]))
    other.accumulate(torch.tensor([0.5]), torch.tensor([0.5]))
    e.merge(other)
    result = e.compute()
    assert result["Insertion AUC"] == pytest.approx(0.7)
    assert result["Deletion AUC"] == pytest.approx(0.2)
    assert result["Average Drop"] == 0.0 and result["Increase in Confidence"] == 0.0


def test_rejects_mismatched_saliency():
    with pytest.raises(ValueError):
        insertion_deletion_auc(mean_score, IMAGE, torch.rand(1, 3, 2), torch.tensor([0]))


def test_log_space_scores_survive_vanishing_probabilities():
    full, masked = torch.tensor([0.8, 0.5, 0.3]), torch.tensor([0.4, 0.6, 0.3])
    plain, logs = FidelityEvaluator(), FidelityEvaluator()
    plain.accumulate(full, masked)
    logs.accumulate(full.log(), masked.log(), log_space=True)
    for key in ("Average Drop", "Increase in Confidence", "num_images"):
        assert logs.compute()[key] == pytest.approx(plain.compute()[key])
    # exp(-1000) is 0 even in float64; in log space the ratio is still exp(-2): drop 1 - e^-2.
    deep = FidelityEvaluator()
    deep.accumulate(torch.tensor([-1000.0, -5.0]), torch.tensor([-1002.0, float("nan")]),
                    log_space=True)
    result = deep.compute()
    assert result["num_images"] == 1 and result["num_invalid_scores"] == 1
    assert result["Average Drop"] == pytest.approx(100 * (1 - math.exp(-2)))
    assert result["Increase in Confidence"] == 0.0


# ---------------------------------------------------------------------------
# ROAD, against pytorch-grad-cam 1.5.7 (requirements-dev.txt)
# ---------------------------------------------------------------------------
def road_setup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4)).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 20, 24, generator=g)
    maps = torch.rand(2, 20, 24, generator=g)
    return net, images, maps, torch.tensor([2, 0])


def test_imputation_equals_the_sparse_solve_of_pytorch_grad_cam():
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from wsol.metrics.road import impute
    _, images, maps, _ = road_setup()
    removed = maps > 0.35  # a large hole touching the borders
    ours = impute(images, removed)
    theirs = torch.stack([road.NoisyLinearImputer(noise=0.0)(images[i], (~removed[i]).float())
                          for i in range(2)])
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.equal(ours[~removed[:, None].expand_as(ours)],
                       images[~removed[:, None].expand_as(images)])


def test_road_equals_pytorch_grad_cam_with_the_same_noise():
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from wsol.metrics.road import road_scores
    net, images, maps, targets = road_setup()
    torch.manual_seed(7)
    kw = dict(input_tensor=images, cams=maps.numpy(), model=net,
              targets=[ClassifierOutputSoftmaxTarget(int(t)) for t in targets])
    combined = road.ROADCombined()(**kw)
    with torch.no_grad():
        probabilities = lambda x: net(x).softmax(1)  # noqa: E731
        full = probabilities(images).gather(1, targets[:, None])[:, 0]
        ours = road_scores(probabilities, images, maps, targets, full,
                           torch.Generator().manual_seed(7))
    assert torch.allclose(ours["ROAD"].float(), torch.from_numpy(combined), atol=1e-5)
    torch.manual_seed(7)
    lerf = road.ROADLeastRelevantFirstAverage()(**kw)
    morf = road.ROADMostRelevantFirstAverage()(**kw)
    assert torch.allclose(ours["LeRF"].float(), torch.from_numpy(lerf), atol=1e-5)
    assert torch.allclose(ours["MoRF"].float(), torch.from_numpy(morf), atol=1e-5)


def test_road_in_the_evaluator_adds_up_across_batches_and_resamples():
    from wsol.metrics.base import FidelityInputs, MapBatch
    net, images, maps, targets = road_setup()
    scorer = lambda x, key: net(x).double().log_softmax(1)  # noqa: E731
    targets = torch.tensor(targets)
    with torch.no_grad():
        logits = net(images)
    ids = ["a", "b"]

    def run(parts):
        e = FidelityEvaluator(scorer, image_ids=ids, road=True, seed=3)
        for part in map(torch.tensor, parts):
            e.process(MapBatch("cam", "softmax", maps[part], [ids[i] for i in part.tolist()],
                               images=images[part],
                               fidelity=FidelityInputs(maps[part], targets[part],
                                                       logits[part], "logits")))
        return e
    whole, split = run([[0, 1]]), run([[0], [1]])
    a, b = whole.compute(), split.compute()
    for key in ("ROAD MoRF", "ROAD LeRF", "ROAD"):
        assert a[key] == pytest.approx(b[key], abs=1e-9)
    assert a["ROAD"] == pytest.approx((a["ROAD LeRF"] - a["ROAD MoRF"]) / 2)
    # Every resample that takes each image once gives the whole-set numbers.
    samples = whole.bootstrap_samples(np.ones((1, 2)))
    assert samples["ROAD"][0] == pytest.approx(a["ROAD"])

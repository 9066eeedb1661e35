"""Metric meters against hand-computed values, and batch-independence properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgraph.errors import ConfigError
from mtgraph.tasks import AccuracyMeter, DepthMeter, EdgeMeter, MSEMeter, NormalsMeter, SegmentationMeter


def _one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# --- segmentation --------------------------------------------------------------------------------


def test_miou_excludes_absent_classes_and_ignored_pixels():
    target = torch.tensor([[[0, 0, 1], [1, -1, 3]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])  # class 2 only where the target is ignored
    meter = SegmentationMeter(num_classes=4, ignore_index=-1)
    meter.update(_one_hot_logits(pred, 4), target)
    result = meter.compute()
    # IoU: class 0 = 1/3, class 1 = 2/3, class 3 = 0; class 2 is absent from both -> excluded.
    assert result["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert result["pixel_acc"] == pytest.approx(3 / 5)


def test_class_iou_gives_each_labels_iou_and_leaves_compute_unchanged():
    target = torch.tensor([[[0, 0, 1], [1, -1, 3]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    meter = SegmentationMeter(num_classes=4, ignore_index=-1)
    meter.update(pred, target)
    ious = meter.class_iou()
    # Same counts as above: class 0 = 1/3, class 1 = 2/3, class 2 absent (NaN), class 3 = 0.
    assert ious[0] == pytest.approx(1 / 3) and ious[1] == pytest.approx(2 / 3) and ious[3] == 0.0
    assert math.isnan(ious[2])
    assert set(meter.compute()) == {"miou", "pixel_acc"}  # Δ_MTL keeps averaging the same two metrics
    assert meter.compute()["miou"] == pytest.approx(np.nanmean(ious))


def test_miou_accepts_labels_and_is_one_for_a_perfect_prediction():
    target = torch.tensor([[[0, 2], [2, 2]]])
    meter = SegmentationMeter(num_classes=5)
    meter.update(target.clone(), target)
    assert meter.compute() == {"miou": 1.0, "pixel_acc": 1.0}


def test_miou_uses_the_dataset_confusion_not_a_mean_over_batches():
    meter = SegmentationMeter(num_classes=2)
    meter.update(torch.tensor([[[0, 0]]]), torch.tensor([[[0, 1]]]))  # batch mIoU 0.25
    meter.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))  # batch mIoU 1.0
    # Dataset: class 0 IoU = 1/2, class 1 IoU = 2/3.
    assert meter.compute()["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_segmentation_meter_rejects_bad_inputs():
    meter = SegmentationMeter(num_classes=3)
    with pytest.raises(ConfigError, match="does not fit"):
        meter.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="target labels"):
        meter.update(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 5))
    assert math.isnan(SegmentationMeter(3).compute()["miou"])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
def test_segmentation_meter_does_not_depend_on_batching(seed, split):
    rng = np.random.default_rng(seed)
    target = torch.from_numpy(rng.integers(-1, 4, (6, 3, 4)))
    pred = torch.from_numpy(rng.integers(0, 4, (6, 3, 4)))
    whole, parts = SegmentationMeter(4), SegmentationMeter(4)
    whole.update(pred, target)
    parts.update(pred[:split], target[:split])
    parts.update(pred[split:], target[split:])
    assert torch.equal(whole.confusion, parts.confusion)


# --- depth ---------------------------------------------------------------------------------------


def test_depth_metrics_skip_pixels_without_measurement():
    output = torch.tensor([1.0, 2.0, 3.0, 10.0]).reshape(1, 1, 1, 4)
    target = torch.tensor([2.0, 2.0, 0.0, 5.0]).reshape(1, 1, 1, 4)
    meter = DepthMeter()
    meter.update(output, target)
    result = meter.compute()
    assert result["rmse"] == pytest.approx(math.sqrt(26 / 3))
    assert result["abs_rel"] == pytest.approx((1 / 2 + 0 + 5 / 5) / 3)
    assert result["abs_err"] == pytest.approx(2.0)


def test_rmse_pools_pixels_over_batches():
    meter = DepthMeter()
    meter.update(torch.full((1, 1, 1, 1), 3.0), torch.ones(1, 1, 1, 1))  # error 2, one pixel
    meter.update(torch.ones(1, 1, 1, 3), torch.ones(1, 1, 1, 3))  # error 0, three pixels
    assert meter.compute()["rmse"] == pytest.approx(math.sqrt(4 / 4))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_depth_meter_does_not_depend_on_batching(seed, split):
    rng = np.random.default_rng(seed)
    target = torch.from_numpy(rng.uniform(-1, 5, (4, 1, 3, 3)).clip(0))
    output = torch.from_numpy(rng.uniform(0, 5, (4, 1, 3, 3)))
    whole, parts = DepthMeter(), DepthMeter()
    whole.update(output, target)
    parts.update(output[:split], target[:split])
    parts.update(output[split:], target[split:])
    for name, value in whole.compute().items():
        assert parts.compute()[name] == pytest.approx(value, nan_ok=True)


# --- normals -------------------------------------------------------------------------------------


def test_angle_error_of_orthogonal_identical_and_opposite_normals():
    target = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]).T.reshape(1, 3, 1, 4)
    # Orthogonal, identical (unnormalised), opposite; the last target pixel has no ground truth.
    output = torch.tensor([[0.0, 5, 0], [0, 3, 0], [0, 0, -2], [1, 0, 0]]).T.reshape(1, 3, 1, 4)
    meter = NormalsMeter()
    meter.update(output, target)
    result = meter.compute()
    assert result["angle_mean"] == pytest.approx((90 + 0 + 180) / 3)
    assert result["cos_sim"] == pytest.approx((0 + 1 - 1) / 3)
    assert result["within_11_25"] == pytest.approx(1 / 3)
    assert result["within_30"] == pytest.approx(1 / 3)


def test_ninety_degrees_for_every_orthogonal_pixel():
    target = torch.zeros(2, 3, 4, 4)
    target[:, 2] = 1
    output = torch.zeros(2, 3, 4, 4)
    output[:, 0] = 1
    meter = NormalsMeter()
    meter.update(output, target)
    assert meter.compute()["angle_mean"] == pytest.approx(90.0)


# --- edges ---------------------------------------------------------------------------------------


def test_ods_f_is_the_best_f_over_thresholds():
    # Two edges among four pixels; probabilities 0.9 (edge), 0.6, 0.3 (edge), 0.1.
    probs = [0.9, 0.6, 0.3, 0.1]
    output = torch.tensor([_logit(p) for p in probs]).reshape(1, 1, 1, 4)
    target = torch.tensor([1.0, 0, 1, 0]).reshape(1, 1, 1, 4)
    meter = EdgeMeter(num_thresholds=9)  # thresholds 0.1 .. 0.9
    meter.update(output, target)
    result = meter.compute()
    # t in (0.1, 0.3]: predict {0.9, 0.6, 0.3}: P = 2/3, R = 1, F = 0.8 (the best);
    # t in (0.3, 0.6]: P = 1/2, R = 1/2; t in (0.6, 0.9]: P = 1, R = 1/2.
    assert result["ods_f"] == pytest.approx(0.8)
    expected_bce = -np.mean([math.log(0.9), math.log(0.4), math.log(0.3), math.log(0.9)])
    assert result["bce"] == pytest.approx(expected_bce, rel=1e-5)


def test_ods_f_pools_counts_over_the_dataset():
    target = torch.tensor([1.0, 0]).reshape(1, 1, 1, 2)
    meter = EdgeMeter(num_thresholds=9)
    meter.update(torch.tensor([_logit(0.95), _logit(0.85)]).reshape(1, 1, 1, 2), target)
    meter.update(torch.tensor([_logit(0.75), _logit(0.05)]).reshape(1, 1, 1, 2), target)
    # Threshold 0.9 -> P=1, R=1/2 (F=2/3); 0.8 -> P=1/2, R=1/2; 0.7 -> P=2/3, R=1 (F=0.8).
    assert meter.compute()["ods_f"] == pytest.approx(0.8)


def test_edge_tolerance_forgives_a_one_pixel_shift():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, :, 2] = 1
    output = torch.full((1, 1, 5, 5), -10.0)
    output[0, 0, :, 3] = 10.0  # the predicted edge is one column off
    strict, tolerant = EdgeMeter(tolerance=0), EdgeMeter(tolerance=1)
    strict.update(output, target)
    tolerant.update(output, target)
    assert strict.compute()["ods_f"] == 0.0
    assert tolerant.compute()["ods_f"] == pytest.approx(1.0)


# --- simple meters -------------------------------------------------------------------------------


def test_mse_and_accuracy():
    mse = MSEMeter()
    mse.update(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]]))
    assert mse.compute() == {"mse": pytest.approx(2.5), "mae": pytest.approx(1.5)}
    accuracy = AccuracyMeter()
    accuracy.update(torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 0, 0]))
    assert accuracy.compute()["accuracy"] == pytest.approx(2 / 3)
    accuracy.reset()
    assert math.isnan(accuracy.compute()["accuracy"])


@pytest.mark.parametrize("meter", [DepthMeter(), NormalsMeter(), MSEMeter(), EdgeMeter()])
def test_shape_mismatch_is_a_config_error(meter):
    with pytest.raises(ConfigError, match="output shape"):
        meter.update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))

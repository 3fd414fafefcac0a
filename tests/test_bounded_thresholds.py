"""Thresholds in bounded memory: the histogram pixel threshold against the exact F1 optimum, checkpoint layout."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.post_processing import PostProcessor
from safetensors.torch import load_file
from sklearn.metrics import precision_recall_curve

from anomalib_dinomaly.metrics.histogram_threshold import HistogramF1AdaptiveThreshold, float_bin_edges, float_bins
from anomalib_dinomaly.post_processor import DinomalyPostProcessor
from tests.conftest import SHARED


def exact_best_f1(maps: np.ndarray, masks: np.ndarray) -> float:
    """The F1 of the exact F1-optimal threshold (every distinct value tried)."""
    precision, recall, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    return float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-300)))


def f1_above(maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
    """F1 of calling ``value > threshold`` anomalous, as the post-processor applies it."""
    predicted = maps > np.float32(threshold)
    return float(2 * (predicted & masks).sum() / (predicted.sum() + masks.sum()))


def histogram_threshold(maps: torch.Tensor, masks: torch.Tensor, batch: int = 4) -> float:
    metric = HistogramF1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"])
    for start in range(0, len(maps), batch):
        metric.update(SimpleNamespace(anomaly_map=maps[start : start + batch], gt_mask=masks[start : start + batch]))
    return float(metric.compute())


def synthetic(scale: float, offset: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(16, 96, 96, dtype=torch.bool)
    masks[:8, 20:45, 30:70] = True
    masks[3:6, 70:80, 5:15] = True
    noise = torch.rand(16, 1, 96, 96, generator=generator) + 0.7 * masks.unsqueeze(1)
    return torch.nn.functional.avg_pool2d(noise, 9, stride=1, padding=4)[:, 0] * scale + offset, masks


def golden_maps() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    found = []
    for name in ("official_a", "dinomaly2_a", "dinomaly2_dinov3"):
        path = SHARED / "golden" / name / "eval.safetensors"
        if path.exists():
            tensors = load_file(str(path))
            found.append((name, tensors["anomaly_map_256_smoothed"][:, 0], tensors["gt_256"][:, 0] > 0))
    return found


def test_bins_are_ordered_and_edges_invert_them():
    values = torch.tensor([-3e4, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.25, 0.2501, 1.0, 7.5e3])
    bins = float_bins(values)
    assert torch.all(bins[1:] >= bins[:-1])
    edges = float_bin_edges(bins)
    assert torch.all(edges <= values) and torch.equal(float_bins(edges), bins)
    assert torch.all((values - edges).abs() <= values.abs() * 2**-11 + 1e-38)  # a relative 2**-11 at most


@pytest.mark.parametrize(("scale", "offset", "seed"), [(1.0, 0.0, 0), (1e-3, 0.0, 1), (50.0, -30.0, 2), (1.0, -0.5, 3)])
def test_pixel_threshold_f1_is_within_1e_3_of_the_exact_optimum_on_synthetic_maps(scale, offset, seed):
    maps, masks = synthetic(scale, offset, seed)
    threshold = histogram_threshold(maps, masks)
    gap = exact_best_f1(maps.numpy(), masks.numpy()) - f1_above(maps.numpy(), masks.numpy(), threshold)
    assert -1e-12 <= gap <= 1e-3


def test_pixel_threshold_f1_is_within_1e_3_of_the_exact_optimum_on_the_shared_bottle_maps():
    found = golden_maps()
    if not found:
        pytest.skip("the shared golden maps are not available")
    for name, maps, masks in found:
        threshold = histogram_threshold(maps, masks, batch=1)
        gap = exact_best_f1(maps.numpy(), masks.numpy()) - f1_above(maps.numpy(), masks.numpy(), threshold)
        assert -1e-12 <= gap <= 1e-3, name


def test_pixel_threshold_fallbacks_without_one_class():
    maps = torch.linspace(-1, 2, 50).reshape(2, 5, 5)
    assert histogram_threshold(maps, torch.zeros(2, 5, 5)) == pytest.approx(2.0)
    assert histogram_threshold(maps, torch.ones(2, 5, 5)) == pytest.approx(-1.0)


def test_histogram_states_add_up_across_ranks():
    """DDP reduces each state with its ``dist_reduce_fx`` (torchmetrics' ``merge_state`` applies the same)."""
    maps, masks = synthetic(1.0, 0.0, 4)
    ranks = [HistogramF1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"]) for _ in range(2)]
    for index in range(len(maps)):
        ranks[index % 2].update(SimpleNamespace(anomaly_map=maps[index : index + 1], gt_mask=masks[index : index + 1]))
    ranks[0].merge_state(ranks[1])
    assert float(ranks[0].compute()) == histogram_threshold(maps, masks)


def test_checkpoint_layout_is_anomalibs():
    ours, theirs = DinomalyPostProcessor(), PostProcessor()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name in ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        getattr(theirs, name).fill_(0.25)
    ours.load_state_dict(theirs.state_dict())
    assert float(ours.pixel_threshold) == pytest.approx(0.25)


def test_post_processor_fits_the_histogram_pixel_threshold_and_exact_image_threshold():
    maps, masks = synthetic(1.0, 0.0, 5)
    scores = maps.flatten(1).amax(1)
    labels = masks.flatten(1).any(1).long()
    post_processor = DinomalyPostProcessor()
    for start in range(0, len(maps), 4):
        batch = SimpleNamespace(
            anomaly_map=maps[start : start + 4], gt_mask=masks[start : start + 4],
            pred_score=scores[start : start + 4], gt_label=labels[start : start + 4],
        )
        post_processor.on_validation_batch_end(None, None, batch)
    post_processor.on_validation_epoch_end(None, None)
    assert float(post_processor.pixel_threshold) == histogram_threshold(maps, masks)
    assert float(post_processor.pixel_min) == float(maps.min()) and float(post_processor.pixel_max) == float(maps.max())
    assert float(post_processor.image_threshold) in scores.tolist()  # exact: one of the image scores


def test_category_thresholds_fit_label_and_write(tmp_path):
    from anomalib_dinomaly.metrics import CategoryThresholds  # noqa: PLC0415

    maps, masks = synthetic(1.0, 0.0, 6)
    scores = maps.flatten(1).amax(1)
    labels = masks.flatten(1).any(1).long()
    categories = ["a"] * 8 + ["b"] * 8
    callback = CategoryThresholds(pixel=True)
    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path), datamodule=None, callbacks=[callback])
    module = SimpleNamespace(post_processor=None)
    callback.on_validation_epoch_start(trainer, module)
    for start in (0, 4, 8, 12):  # batches of 4 with 8 of each category: "a" all anomalous, "b" mixed
        index = slice(start, start + 4)
        batch = SimpleNamespace(
            pred_score=scores[index], gt_label=labels[index], anomaly_map=maps[index], gt_mask=masks[index],
            category=categories[index],
        )
        callback.on_validation_batch_end(trainer, module, None, batch, 0)
    callback.on_validation_epoch_end(trainer, module)
    assert set(callback.image_thresholds) == set(callback.pixel_thresholds) == {"a", "b"}
    assert callback.pixel_thresholds["b"] == histogram_threshold(maps[8:], masks[8:])
    callback.on_test_start(trainer, module)
    assert json.loads((tmp_path / "category_thresholds.json").read_text())["raw"]["pixel"] == callback.pixel_thresholds
    batch = SimpleNamespace(pred_score=scores[6:10], anomaly_map=maps[6:10], category=categories[6:10])
    callback.on_test_batch_end(trainer, module, None, batch, 0)
    expected = [scores[i] > callback.image_thresholds[categories[i]] for i in range(6, 10)]
    assert batch.pred_label.tolist() == [bool(value) for value in expected]
    assert batch.pred_mask.shape == maps[6:10].shape


def test_category_thresholds_after_the_post_processor_is_refused():
    from anomalib_dinomaly.metrics import CategoryThresholds  # noqa: PLC0415

    callback, post_processor = CategoryThresholds(), DinomalyPostProcessor()
    trainer = SimpleNamespace(callbacks=[post_processor, callback])
    with pytest.raises(RuntimeError, match="after the model's post-processor"):
        callback.on_predict_start(trainer, SimpleNamespace(post_processor=post_processor))

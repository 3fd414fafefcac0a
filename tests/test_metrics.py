"""The paper's seven metrics against independent computations, and the per-category evaluator and table."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.metrics import AUPRO
from safetensors.torch import load_file
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from anomalib_dinomaly.data import CategoryImageBatch
from anomalib_dinomaly.metrics import (
    EXACT_AUPRO,
    REPORTED_METRICS,
    CategoryEvaluator,
    CategoryTable,
    apply_thresholds,
    paper_metrics,
)
from anomalib_dinomaly.metrics.functional import image_metrics, pixel_metrics
from tests.conftest import SHARED

GOLDEN = SHARED / "golden"


def reference_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """The official F1-max: ``2PR / (P + R + 1e-7)`` over the precision-recall curve without its last point."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.max((2 * precision * recall / (precision + recall + 1e-7))[:-1]))


def reference_official_aupro(maps: np.ndarray, masks: np.ndarray) -> float:
    """The official AUPRO as described (one threshold at a time, scikit-image regions, scikit-learn ``auc``)."""
    regions = [
        (image, labelled == region)
        for image, mask in enumerate(masks)
        for labelled in [measure.label(mask.astype(int))]
        for region in range(1, labelled.max() + 1)
    ]
    normal = ~masks
    fprs, pros = [], []
    low, high = maps.min(), maps.max()
    for threshold in np.arange(low, high, (high - low) / 200):
        predicted = maps > threshold
        pros.append(np.mean([predicted[image][region].sum() / region.sum() for image, region in regions]))
        fprs.append((predicted & normal).sum() / normal.sum())
    kept = np.array(fprs) < 0.3
    fpr = np.array(fprs)[kept]
    return float(auc(fpr / fpr.max(), np.array(pros)[kept]))


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Brute force: every distinct score as a threshold, 8-connected regions, trapezoids cut at ``fpr_limit``."""
    regions = []
    for image, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(image, labelled == region) for region in range(1, count + 1)]
    background = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fprs.append((predicted & background).sum() / background.sum())
        pros.append(np.mean([predicted[image][region].mean() for image, region in regions]))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(zip(fprs, pros), zip(fprs[1:], pros[1:])):
        if f0 >= fpr_limit:
            break
        if f1 > fpr_limit:
            p1 = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
            f1 = fpr_limit
        area += (f1 - f0) * (p0 + p1) / 2
    return area / fpr_limit


def test_image_metrics_hand_computed():
    # Ranked: 0.8 (anomalous), 0.4 (normal), 0.35 (anomalous), 0.1 (normal).
    values = image_metrics(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    assert values["image_AUROC"] == pytest.approx(3 / 4)  # 3 of 4 (anomalous, normal) pairs ordered
    assert values["image_AP"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # precision 1 at recall 1/2, 2/3 at 1
    assert values["image_F1Max"] == pytest.approx(0.8)  # threshold 0.35: precision 2/3, recall 1


@pytest.mark.parametrize(
    ("mask", "scores", "expected"),
    [
        # One 2-pixel region: half of it found before the first false positive (FPR 1/3 > 0.3).
        ([1, 1, 0, 0, 0], [0.9, 0.2, 0.8, 0.1, 0.0], 0.5),
        # Regions {0} and {2, 3, 4}: mean overlap (1 + 1/3) / 2 before the first false positive.
        ([1, 0, 1, 1, 1, 0, 0], [0.9, 0.05, 0.8, 0.1, 0.1, 0.7, 0.0], 2 / 3),
    ],
)
def test_exact_aupro_hand_computed(mask, scores, expected):
    values = pixel_metrics(torch.tensor([[scores]]), torch.tensor([[mask]]))
    assert values[EXACT_AUPRO] == pytest.approx(expected, abs=1e-12)
    assert reference_aupro(np.array([[scores]]), np.array([[mask]], dtype=bool), 0.3) == pytest.approx(expected)


def test_metrics_match_independent_references():
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 12, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 8:11, 1:3] = True
    masks[1, 0:2, 9:12] = True
    masks[2, 5, 5] = True
    maps = torch.rand(4, 12, 12, generator=generator) + 0.6 * masks * torch.rand(4, 12, 12, generator=generator)
    maps = 3 * maps - 1  # outside [0, 1]: must not go through a float32 sigmoid
    scores = torch.tensor([0.9, 0.2, 0.7, 0.4, 0.6, 0.1])
    labels = torch.tensor([1, 0, 1, 0, 0, 1])

    values = paper_metrics(scores, labels, maps.unsqueeze(1), masks.to(torch.uint8) * 255)

    flat_maps, flat_masks = maps.numpy().ravel(), masks.numpy().ravel()
    expected = {
        "image_AUROC": roc_auc_score(labels, scores),
        "image_AP": average_precision_score(labels, scores),
        "image_F1Max": reference_f1_max(labels.numpy(), scores.numpy()),
        "pixel_AUROC": roc_auc_score(flat_masks, flat_maps),
        "pixel_AP": average_precision_score(flat_masks, flat_maps),
        "pixel_F1Max": reference_f1_max(flat_masks, flat_maps),
        "pixel_AUPRO": reference_official_aupro(maps.numpy(), masks.numpy()),
        EXACT_AUPRO: reference_aupro(maps.numpy(), masks.numpy(), 0.3),
    }
    assert set(values) == set(REPORTED_METRICS)
    for metric in REPORTED_METRICS:
        assert values[metric] == pytest.approx(expected[metric], abs=1e-9), metric


def anomalib_aupro(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """anomalib's AUPRO (every threshold, float32 sums): the exact AUPRO's definition, for maps too big to brute-force."""
    metric = AUPRO(fields=["preds", "target"])
    metric.update(SimpleNamespace(preds=maps.float(), target=masks.to(torch.uint8)))
    return float(metric.compute())


def _synthetic_maps(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 64, 64) maps and masks: smooth maps with blob defects, or the same quantised to few tied values."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(12, 64, 64, dtype=torch.bool)
    for image in range(6):  # six anomalous images, one to three regions each
        for _ in range(1 + image % 3):
            y, x = torch.randint(4, 52, (2,), generator=generator).tolist()
            h, w = torch.randint(2, 12, (2,), generator=generator).tolist()
            masks[image, y : y + h, x : x + w] = True
    noise = torch.rand(12, 1, 64, 64, generator=generator)
    maps = torch.nn.functional.avg_pool2d(noise + 1.5 * masks.unsqueeze(1), 7, stride=1, padding=3)[:, 0]
    if kind == "tied":
        maps = torch.round(maps * 8) / 8
    return maps, masks


@pytest.mark.parametrize(("kind", "seed"), [("smooth", 0), ("smooth", 1), ("tied", 2)])
def test_official_aupro_equals_a_reimplementation_of_the_official_function(kind, seed):
    maps, masks = _synthetic_maps(kind, seed)
    values = pixel_metrics(maps, masks)
    assert values["pixel_AUPRO"] == pytest.approx(reference_official_aupro(maps.numpy(), masks.numpy()), abs=1e-9)
    assert values[EXACT_AUPRO] == pytest.approx(anomalib_aupro(maps, masks), abs=1e-6)


@pytest.mark.parametrize("golden", ["dinomaly2_a", "dinomaly2_dinov3", "official_a"])
def test_all_metrics_equal_the_official_evaluation_on_the_golden_bottle_maps(golden):
    """The golden sets hold 256 x 256 blurred maps of shared bottle images and the official functions' values."""
    if not (GOLDEN / golden / "eval.safetensors").exists():
        pytest.skip(f"{GOLDEN / golden} is not available")
    tensors = load_file(str(GOLDEN / golden / "eval.safetensors"))
    maps, masks = tensors["anomaly_map_256_smoothed"][:, 0], tensors["gt_256"][:, 0] > 0
    values = paper_metrics(tensors["scores"], tensors["labels"], maps, masks)
    stored = json.loads((GOLDEN / golden / "inputs.json").read_text())["reference_values"]
    stored = stored["eval_metrics_on_these_3_images"]
    names = ("auroc_sp", "ap_sp", "f1_sp", "auroc_px", "ap_px", "f1_px", "aupro_px")
    for metric, name in zip(REPORTED_METRICS, names, strict=False):
        expected = stored[name] if stored[name] is not None else reference_official_aupro(maps.numpy(), masks.numpy())
        assert values[metric] == pytest.approx(expected, abs=1e-9), metric
    assert values["pixel_AUPRO"] == pytest.approx(reference_official_aupro(maps.numpy(), masks.numpy()), abs=1e-9)
    assert values[EXACT_AUPRO] == pytest.approx(anomalib_aupro(maps, masks), abs=1e-6)


def test_undefined_metrics_are_nan():
    values = paper_metrics(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]), torch.rand(2, 4, 4), torch.zeros(2, 4, 4))
    assert all(math.isnan(values[metric]) for metric in REPORTED_METRICS)


class _Recorder:
    """Stands in for the LightningModule: collects what the evaluator logs."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float) -> None:
        self.logged[name] = value


def _batch(categories, scores, labels, maps, masks) -> CategoryImageBatch:
    return CategoryImageBatch(
        image=torch.zeros(len(categories), 3, 16, 16),
        gt_label=labels,
        gt_mask=masks,
        pred_score=scores,
        anomaly_map=maps,
        category=list(categories),
    )


def test_evaluator_rows_equal_single_category_evaluation_and_mean_is_unweighted(tmp_path):
    generator = torch.Generator().manual_seed(1)
    sizes = {"bottle": 7, "tile": 3}  # different sizes: a weighted mean would differ
    data = {}
    for name, size in sizes.items():
        masks = torch.zeros(size, 16, 16, dtype=torch.bool)
        masks[: size // 2 + 1, 4:9, 5:11] = True
        labels = masks.flatten(1).any(1).long()
        maps = torch.rand(size, 1, 16, 16, generator=generator) + masks.unsqueeze(1) * 0.3
        data[name] = (torch.rand(size, generator=generator) + labels * 0.2, labels, maps, masks)
    categories = ["bottle"] * 7 + ["tile"] * 3
    merged = [torch.cat([data[name][i] for name in sizes]) for i in range(4)]
    trainer = SimpleNamespace(world_size=1, is_global_zero=True, default_root_dir=str(tmp_path), datamodule=None)
    module = _Recorder()
    evaluator = CategoryEvaluator(eval_size=None)
    evaluator.on_test_start(trainer, module)
    evaluator.on_test_epoch_start(trainer, module)
    for start, end in ((0, 4), (4, 9), (9, 10)):  # the middle batch spans both categories
        batch = _batch(categories[start:end], *(tensor[start:end] for tensor in merged))
        evaluator.on_test_batch_end(trainer, module, batch, batch, 0)
    evaluator.on_test_epoch_end(trainer, module)

    table = evaluator.table
    assert table.categories == ["bottle", "tile"]
    for name in sizes:
        assert table.rows[name] == pytest.approx(paper_metrics(*data[name]), nan_ok=False)
    for metric in REPORTED_METRICS:
        assert table.mean[metric] == pytest.approx((table.rows["bottle"][metric] + table.rows["tile"][metric]) / 2)
        assert module.logged[metric] == pytest.approx(table.mean[metric])
        assert module.logged[f"{metric}/tile"] == pytest.approx(table.rows["tile"][metric])
    assert CategoryTable.read_csv(tmp_path / "per_category_metrics.csv").rows == table.rows
    markdown = (tmp_path / "per_category_metrics.md").read_text()
    assert markdown.count("\n") == 2 + len(sizes) + 1 and "| **mean** |" in markdown


def test_evaluator_rejects_interleaved_categories(tmp_path):
    trainer = SimpleNamespace(world_size=1, is_global_zero=True, default_root_dir=str(tmp_path), datamodule=None)
    evaluator = CategoryEvaluator()
    evaluator.on_test_epoch_start(trainer, _Recorder())
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    batch = _batch(["a", "b", "a"], torch.rand(3), torch.tensor([0, 1, 0]), torch.rand(3, 1, 8, 8), masks)
    with pytest.raises(RuntimeError, match="not contiguous"):
        evaluator.on_test_batch_end(trainer, _Recorder(), batch, batch, 0)


def test_apply_thresholds_per_category():
    scores = torch.tensor([0.3, 0.3, 0.8, 0.8])
    labels = apply_thresholds(scores, ["a", "b", "a", "b"], {"a": 0.2, "b": 0.5})
    assert labels.tolist() == [True, False, True, True]
    with pytest.raises(KeyError, match="c"):
        apply_thresholds(scores, ["a", "b", "c", "b"], {"a": 0.2, "b": 0.5})

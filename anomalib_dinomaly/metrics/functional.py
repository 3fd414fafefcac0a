"""The paper's seven metrics for one set of predictions, computed with anomalib's metric classes.

Image level: AUROC, AP (area under the precision-recall curve as step-wise average precision, i.e.
scikit-learn's ``average_precision_score``), F1-max. Pixel level: the same three, plus AUPRO up to a
false-positive rate of 0.3. anomalib's ``AUROC``, ``AUPR``, ``F1Max`` and ``AUPRO`` compute exactly these
over all thresholds; the only difference from the official evaluation is its AUPRO, which samples 200
thresholds and rescales the FPR axis by the largest sampled FPR below 0.3, where anomalib's uses every
threshold and interpolates at exactly 0.3 (the MVTec-AD definition), so the two can differ slightly.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from anomalib.metrics import AUPR, AUPRO, AUROC, F1Max

__all__ = ["IMAGE_METRICS", "PAPER_METRICS", "PIXEL_METRICS", "image_metrics", "paper_metrics", "pixel_metrics"]

IMAGE_METRICS = ("image_AUROC", "image_AP", "image_F1Max")
PIXEL_METRICS = ("pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO")
PAPER_METRICS = IMAGE_METRICS + PIXEL_METRICS

_FIELDS = ("preds", "target")


def _unit_range(preds: torch.Tensor) -> torch.Tensor:
    """Scores as they are when in [0, 1], else min-max rescaled in float64.

    torchmetrics applies a sigmoid to scores outside [0, 1]; in float32 that can merge close scores and
    change the ranking, while a float64 rescale keeps every float32 score distinct and in order.
    """
    preds = preds.float()
    low, high = preds.min(), preds.max()
    if low >= 0 and high <= 1:
        return preds
    preds = preds.double()
    return (preds - low) / (high - low) if high > low else torch.zeros_like(preds)


def _curve_metrics(preds: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    """AUROC, AP, F1-max of scores ``preds`` against binary ``target`` (same number of elements)."""
    target = target.flatten().long()
    if target.numel() == 0 or bool(target.min() == target.max()):
        return math.nan, math.nan, math.nan
    batch = SimpleNamespace(preds=_unit_range(preds.flatten()), target=target)
    values = []
    for metric_class in (AUROC, AUPR, F1Max):
        metric = metric_class(fields=_FIELDS)
        metric.update(batch)
        values.append(float(metric.compute()))
    return values[0], values[1], values[2]


def image_metrics(pred_scores: torch.Tensor, gt_labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC, AP and F1-max.

    Args:
        pred_scores: (N,) anomaly scores.
        gt_labels: (N,) 0 normal / 1 anomalous.

    Returns:
        ``{"image_AUROC", "image_AP", "image_F1Max"}``; NaN when only one class is present.
    """
    return dict(zip(IMAGE_METRICS, _curve_metrics(pred_scores, gt_labels), strict=True))


def pixel_metrics(anomaly_maps: torch.Tensor, gt_masks: torch.Tensor, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max and AUPRO (normalised area up to ``fpr_limit``).

    Args:
        anomaly_maps: (N, H, W) or (N, 1, H, W) anomaly maps.
        gt_masks: (N, H, W) masks; any value > 0 is anomalous (the official evaluation's ``mask.bool()``).
        fpr_limit: false-positive-rate limit of AUPRO (0.3).

    Returns:
        ``{"pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO"}``; NaN when no pixel (or every pixel)
        is anomalous.
    """
    maps = anomaly_maps.reshape(anomaly_maps.shape[0], *anomaly_maps.shape[-2:])
    masks = (gt_masks > 0).reshape(maps.shape)
    values = dict(zip(PIXEL_METRICS[:3], _curve_metrics(maps, masks), strict=True))
    if math.isnan(values["pixel_AUROC"]):
        return values | {"pixel_AUPRO": math.nan}
    aupro = AUPRO(fields=_FIELDS, fpr_limit=fpr_limit)
    aupro.update(SimpleNamespace(preds=maps.float(), target=masks.to(torch.uint8)))
    return values | {"pixel_AUPRO": float(aupro.compute())}


def paper_metrics(
    pred_scores: torch.Tensor,
    gt_labels: torch.Tensor,
    anomaly_maps: torch.Tensor | None = None,
    gt_masks: torch.Tensor | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All seven metrics (:data:`PAPER_METRICS`); pixel metrics are NaN without maps and masks.

    Args:
        pred_scores: (N,) image scores; gt_labels: (N,) 0/1.
        anomaly_maps: (N, H, W) or (N, 1, H, W); gt_masks: (N, H, W), anomalous where > 0.
        fpr_limit: AUPRO false-positive-rate limit (0.3).
    """
    values = image_metrics(pred_scores, gt_labels)
    if anomaly_maps is None or gt_masks is None:
        return values | dict.fromkeys(PIXEL_METRICS, math.nan)
    return values | pixel_metrics(anomaly_maps, gt_masks, fpr_limit)

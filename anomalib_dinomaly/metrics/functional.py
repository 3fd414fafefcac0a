"""The paper's seven metrics (and the exact AUPRO) for one set of predictions, as the official evaluation computes them.

Image level: AUROC, AP (scikit-learn's step-wise ``average_precision_score``), F1-max (the official
``2PR / (P + R + 1e-7)``). Pixel level: the same three and the official AUPRO (``pixel_AUPRO``, 200
sampled thresholds), plus ``pixel_AUPRO_exact`` over every threshold (anomalib's ``AUPRO``); see
:mod:`anomalib_dinomaly.metrics.aupro` for how the two differ. Pixels are anomalous where the mask is > 0
(the official ``mask.bool()``); regions are 8-connected (the official ``skimage.measure.label``).
"""

from __future__ import annotations

import torch

from anomalib_dinomaly.metrics.accumulator import CategoryAccumulator
from anomalib_dinomaly.metrics.names import (
    EXACT_AUPRO,
    IMAGE_METRICS,
    PAPER_METRICS,
    PIXEL_METRICS,
    REPORTED_METRICS,
)

__all__ = [
    "EXACT_AUPRO",
    "IMAGE_METRICS",
    "PAPER_METRICS",
    "PIXEL_METRICS",
    "REPORTED_METRICS",
    "image_metrics",
    "paper_metrics",
    "pixel_metrics",
]


def image_metrics(pred_scores: torch.Tensor, gt_labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC, AP and F1-max.

    Args:
        pred_scores: (N,) anomaly scores.
        gt_labels: (N,) 0 normal / 1 anomalous.

    Returns:
        ``{"image_AUROC", "image_AP", "image_F1Max"}``; NaN when only one class is present.
    """
    accumulator = CategoryAccumulator()
    accumulator.add(pred_scores, gt_labels)
    row = accumulator.compute()
    return {metric: row[metric] for metric in IMAGE_METRICS}


def pixel_metrics(anomaly_maps: torch.Tensor, gt_masks: torch.Tensor, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max, the official AUPRO and the exact AUPRO (areas up to ``fpr_limit``).

    Args:
        anomaly_maps: (N, H, W) or (N, 1, H, W) anomaly maps.
        gt_masks: (N, H, W) or (N, 1, H, W) masks; any value > 0 is anomalous.
        fpr_limit: false-positive-rate limit of AUPRO (0.3).

    Returns:
        ``{"pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO", "pixel_AUPRO_exact"}``; NaN when no
        pixel (or every pixel) is anomalous.
    """
    accumulator = CategoryAccumulator(fpr_limit)
    count = anomaly_maps.shape[0]
    accumulator.add(torch.zeros(count), torch.zeros(count), anomaly_maps, gt_masks)
    row = accumulator.compute()
    return {metric: row[metric] for metric in (*PIXEL_METRICS, EXACT_AUPRO)}


def paper_metrics(
    pred_scores: torch.Tensor,
    gt_labels: torch.Tensor,
    anomaly_maps: torch.Tensor | None = None,
    gt_masks: torch.Tensor | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """The table's metrics (:data:`REPORTED_METRICS`); pixel metrics are NaN without maps and masks.

    Args:
        pred_scores: (N,) image scores; gt_labels: (N,) 0/1.
        anomaly_maps: (N, H, W) or (N, 1, H, W); gt_masks: (N, H, W), anomalous where > 0.
        fpr_limit: AUPRO false-positive-rate limit (0.3).
    """
    accumulator = CategoryAccumulator(fpr_limit)
    accumulator.add(pred_scores, gt_labels, anomaly_maps, gt_masks)
    row = accumulator.compute()
    return {metric: row[metric] for metric in REPORTED_METRICS}

"""Fitting F1-adaptive thresholds per category on validation batches, in bounded memory."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from anomalib.metrics import F1AdaptiveThreshold

from anomalib_dinomaly.metrics.histogram_threshold import HistogramF1AdaptiveThreshold

__all__ = ["CategoryThresholdFitter"]


class CategoryThresholdFitter:
    """Image (exact, from the scores) and optionally pixel (histogram) F1 thresholds per category.

    Args:
        pixel: also fit pixel thresholds (a fixed 16 MB histogram per category, whatever the validation set).
    """

    def __init__(self, pixel: bool = False) -> None:
        self.pixel = pixel
        self._metrics: dict[str, tuple[F1AdaptiveThreshold, HistogramF1AdaptiveThreshold | None]] = {}

    def update(self, categories: list[str], batch: Any) -> None:  # noqa: ANN401
        """Add a batch (``pred_score``, ``gt_label`` and, for pixels, ``anomaly_map``, ``gt_mask``) by category."""
        for category in dict.fromkeys(categories):
            index = torch.tensor([name == category for name in categories], device=batch.pred_score.device)
            sample = SimpleNamespace(
                pred_score=batch.pred_score.reshape(-1)[index],
                gt_label=batch.gt_label.reshape(-1)[index],
                anomaly_map=None if batch.anomaly_map is None else batch.anomaly_map[index],
                gt_mask=None if batch.gt_mask is None else batch.gt_mask[index],
            )
            if category not in self._metrics:
                pixel = HistogramF1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False) if self.pixel else None
                self._metrics[category] = (F1AdaptiveThreshold(fields=["pred_score", "gt_label"]), pixel)
            image_metric, pixel_metric = self._metrics[category]
            image_metric.update(sample)
            if pixel_metric is not None:
                pixel_metric.update(sample)

    def compute(self) -> tuple[dict[str, float], dict[str, float]]:
        """``(image, pixel)`` raw thresholds per category seen; the fitter starts anew afterwards."""
        image, pixel = {}, {}
        for category, (image_metric, pixel_metric) in self._metrics.items():
            image[category] = float(image_metric.compute())
            if pixel_metric is not None and pixel_metric.update_called:
                pixel[category] = float(pixel_metric.compute())
        self._metrics = {}
        return image, pixel

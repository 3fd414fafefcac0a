"""One category's test predictions, kept compactly until the category is complete, and its metrics.

Only what the metrics need is kept: image scores and labels, and per pixel of the evaluation-size maps
its value, split into normal and anomalous pixels, with the region id of every anomalous pixel (4 bytes
per normal pixel, 8 per anomalous one, instead of the maps and masks). States of several processes
merge (:meth:`CategoryAccumulator.merge`), so DDP ranks can pool a category.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from anomalib_dinomaly.metrics.aupro import exact_aupro, label_regions, official_aupro
from anomalib_dinomaly.metrics.names import EXACT_AUPRO, IMAGE_METRICS, PIXEL_METRICS, REPORTED_METRICS
from anomalib_dinomaly.metrics.ranking import ranking_metrics

__all__ = ["CategoryAccumulator"]

_FIELDS = ("scores", "labels", "normal", "anomalous", "regions")


def _numpy(tensor: torch.Tensor, dtype: type) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(dtype, copy=False)


class CategoryAccumulator:
    """Scores, labels and pixel values of one category, and :meth:`compute` for its row of the table.

    Args:
        fpr_limit: AUPRO false-positive-rate limit (0.3).
    """

    def __init__(self, fpr_limit: float = 0.3) -> None:
        self.fpr_limit = fpr_limit
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in _FIELDS}
        self._region_count = 0
        self.has_pixels = False
        self.samples = 0

    def add(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        maps: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            scores: (B,) image scores; labels: (B,) 0 normal / 1 anomalous.
            maps: (B, H, W) pixel scores; masks: (B, H, W), anomalous where > 0. Both or neither.
        """
        self._parts["scores"].append(_numpy(scores.reshape(-1), np.float32))
        self._parts["labels"].append(_numpy(labels.reshape(-1), np.int8))
        self.samples += int(scores.numel())
        if maps is None or masks is None:
            return
        values = _numpy(maps.reshape(maps.shape[0], *maps.shape[-2:]), np.float32)
        anomalous = _numpy(masks.reshape(values.shape) > 0, bool)
        regions, count = label_regions(anomalous)
        self._parts["normal"].append(values[~anomalous])
        self._parts["anomalous"].append(values[anomalous])
        self._parts["regions"].append(regions[anomalous] - 1 + self._region_count)  # 0-based, unique in the category
        self._region_count += count
        self.has_pixels = True

    def _join(self) -> dict[str, np.ndarray]:
        """Each field as one array, joined field by field so that only one field is ever held twice."""
        for name, parts in self._parts.items():
            if len(parts) != 1:
                self._parts[name] = [np.concatenate(parts) if parts else np.empty(0)]
        return {name: parts[0] for name, parts in self._parts.items()}

    def state(self) -> dict[str, Any]:
        """The kept data as one array per field (to send to other processes)."""
        return self._join() | {"region_count": self._region_count, "has_pixels": self.has_pixels, "samples": self.samples}

    @classmethod
    def merge(cls, states: Iterable[dict[str, Any]], fpr_limit: float = 0.3) -> CategoryAccumulator:
        """One accumulator holding the data of several :meth:`state` results (region ids kept distinct)."""
        merged = cls(fpr_limit)
        for state in states:
            for name in _FIELDS:
                part = state[name] + merged._region_count if name == "regions" else state[name]
                merged._parts[name].append(part)
            merged._region_count += state["region_count"]
            merged.has_pixels |= state["has_pixels"]
            merged.samples += state["samples"]
        return merged

    def compute(self) -> dict[str, float]:
        """The category's metrics (:data:`REPORTED_METRICS`); NaN where undefined (one class only, no maps)."""
        state = self._join()
        labels, scores = state["labels"].astype(bool), state["scores"].astype(np.float32)
        row = dict(zip(IMAGE_METRICS, ranking_metrics(np.sort(scores[~labels]), scores[labels]), strict=True))
        if not self.has_pixels:
            return row | dict.fromkeys((*PIXEL_METRICS, EXACT_AUPRO), math.nan)
        normal = state["normal"].astype(np.float32, copy=False)
        normal.sort()  # in place: the order of the kept normal values does not matter
        anomalous = state["anomalous"].astype(np.float32, copy=False)
        regions = state["regions"].astype(np.int64, copy=False)
        auroc, ap, f1_max = ranking_metrics(normal, anomalous)
        row |= {"pixel_AUROC": auroc, "pixel_AP": ap, "pixel_F1Max": f1_max}
        row["pixel_AUPRO"] = official_aupro(normal, anomalous, regions, self.fpr_limit)
        row[EXACT_AUPRO] = exact_aupro(normal, anomalous, regions, self.fpr_limit)
        return {metric: row[metric] for metric in REPORTED_METRICS}

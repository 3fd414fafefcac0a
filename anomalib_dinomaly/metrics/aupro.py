"""Area under the per-region-overlap curve (AUPRO) up to a false-positive rate of 0.3, two ways.

Both work on the pixels split by label: normal pixels' values sorted, and anomalous pixels' values with
the id of their region (an 8-connected component of one image's mask, :func:`label_regions`). PRO at a
threshold is the mean over all regions of the fraction of the region above it; FPR the fraction of
normal pixels above it.

- :func:`official_aupro` is the paper's (the official ``compute_pro``): 200 evenly spaced thresholds from
  the smallest to the largest map value, the rows with FPR < 0.3 kept, their FPRs divided by the largest
  kept FPR, trapezoids. The paper's tables print this one.
- :func:`exact_aupro` is the MVTec-AD definition that anomalib's ``AUPRO`` implements: every distinct
  value a threshold, the curve cut at exactly FPR 0.3 by linear interpolation, area divided by 0.3.

The official curve ends at its last sampled FPR below 0.3 and is stretched to a width of 1, so the
highest FPRs (where PRO is highest) weigh less than in the exact area; with many tied values the
sampled thresholds can also skip most of the curve. The two typically differ by 0.3 to 1.3 points.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["OFFICIAL_THRESHOLDS", "exact_aupro", "label_regions", "official_aupro"]

#: Thresholds of the official AUPRO.
OFFICIAL_THRESHOLDS = 200

_EIGHT_NEIGHBOURS_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_NEIGHBOURS_IN_PLANE[1] = True  # 8-connected within an image, never across images of the batch


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected anomalous regions of every mask, numbered across the batch.

    Args:
        masks: (B, H, W) bool.

    Returns:
        ``(labels, count)``: (B, H, W) int32 labels, 0 for normal pixels and ``1..count`` for the regions.
    """
    labels, count = ndimage.label(masks, structure=_EIGHT_NEIGHBOURS_IN_PLANE, output=np.int32)
    return labels, int(count)


def _region_weights(regions: np.ndarray, region_count: int) -> np.ndarray:
    """Each anomalous pixel's share of PRO: ``1 / (regions x its region's size)``, so PRO is a weighted count."""
    sizes = np.bincount(regions, minlength=region_count)
    return 1.0 / (region_count * sizes[regions].astype(np.float64))


def official_aupro(
    normal_sorted: np.ndarray,
    anomalous: np.ndarray,
    regions: np.ndarray,
    fpr_limit: float = 0.3,
    thresholds: int = OFFICIAL_THRESHOLDS,
) -> float:
    """The official AUPRO (``compute_pro``) of one category.

    Args:
        normal_sorted: (N,) float32 values of the normal pixels, sorted ascending.
        anomalous: (P,) float32 values of the anomalous pixels.
        regions: (P,) region index of each anomalous pixel, in ``0..R-1`` (every index used).
        fpr_limit: rows with an FPR below it are kept (0.3).
        thresholds: number of evenly spaced thresholds (200).

    Returns:
        The area; NaN without normal or anomalous pixels, or with fewer than two kept rows (the official
        ``auc`` raises there), or when no kept row has a false positive.
    """
    if normal_sorted.size == 0 or anomalous.size == 0:
        return math.nan
    low = min(normal_sorted[0], anomalous.min())
    high = max(normal_sorted[-1], anomalous.max())
    if not high > low:
        return math.nan
    # As the official code: in the maps' float32, np.arange from the minimum in steps of (max - min) / 200.
    levels = np.arange(low, high, (high - low) / thresholds)  # float64, as there
    # For float32 values, "value > level" is "value > the largest float32 <= level": search in float32.
    levels32 = levels.astype(np.float32)
    levels32 = np.where(levels32 > levels, np.nextafter(levels32, np.float32(-np.inf)), levels32)
    region_count = int(regions.max()) + 1
    # A pixel is above the levels below its value ("> threshold"): count it into the bin of the first
    # level >= its value, then sum the bins from the top.
    level_index = np.searchsorted(levels32, anomalous, side="left")
    weights = _region_weights(regions, region_count)
    above_counts = np.bincount(level_index, weights=weights, minlength=levels.size + 1)
    pro = np.cumsum(above_counts[::-1])[::-1][1:]  # pro[k]: weighted pixels above levels[k]
    false_positives = normal_sorted.size - np.searchsorted(normal_sorted, levels32, side="right")
    fpr = false_positives / normal_sorted.size
    kept = fpr < fpr_limit
    if kept.sum() < 2 or not fpr[kept].max() > 0:
        return math.nan
    fpr, pro = fpr[kept] / fpr[kept].max(), pro[kept]
    return float(np.sum(np.abs(np.diff(fpr)) * (pro[1:] + pro[:-1]) / 2))


def exact_aupro(normal_sorted: np.ndarray, anomalous: np.ndarray, regions: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO over every distinct threshold up to exactly ``fpr_limit``, divided by it (anomalib's ``AUPRO``).

    The curve joins the points (FPR, PRO) of the predictions ``value >= t`` for every distinct value ``t``,
    from (0, 0). Only the normal values move FPR: each distinct normal value ``v`` adds the trapezoid from
    (FPR(> v), PRO(> v)) to (FPR(>= v), PRO(>= v)); the last one is cut at ``fpr_limit``. Counts are exact
    integers and sums float64, so this stays exact for any number of pixels.

    Args: as :func:`official_aupro` (without ``thresholds``).

    Returns:
        The normalised area; NaN without normal or anomalous pixels.
    """
    normal_count = normal_sorted.size
    if normal_count == 0 or anomalous.size == 0:
        return math.nan
    region_count = int(regions.max()) + 1

    # Only the top normal values matter: those whose FPR(> v) is still below the limit.
    needed = min(normal_count, math.floor(fpr_limit * normal_count) + 1)
    start = np.searchsorted(normal_sorted, normal_sorted[normal_count - needed], side="left")
    top = normal_sorted[start:][::-1]
    ends = np.append(np.flatnonzero(top[1:] != top[:-1]) + 1, top.size)  # normals >= each distinct value
    values = top[ends - 1]
    fpr_at_or_above = ends / normal_count
    fpr_above = np.concatenate(([0.0], fpr_at_or_above[:-1]))

    # PRO(>= v) and PRO(> v) at each of those values: place every anomalous pixel among the values (few
    # anomalous pixels searched in the values, not the many values in the pixels) and sum weights from the top.
    ascending = values[::-1]
    weights = _region_weights(regions, region_count)

    def pro(side: str) -> np.ndarray:
        above = np.searchsorted(ascending, anomalous, side=side)  # the pixel is above ascending[:above]
        totals = np.bincount(above, weights=weights, minlength=ascending.size + 1)
        return np.cumsum(totals[::-1])[::-1][1:][::-1]  # per value, descending order

    pro_above, pro_at_or_above = pro("left"), pro("right")
    full = fpr_at_or_above <= fpr_limit
    area = float(np.sum((fpr_at_or_above - fpr_above)[full] * (pro_above + pro_at_or_above)[full] / 2))
    end = fpr_at_or_above[full][-1] if full.any() else 0.0
    cut = np.flatnonzero(~full)
    if cut.size:  # the segment that crosses the limit, interpolated linearly up to it
        i = cut[0]
        step = fpr_limit - fpr_above[i]
        pro_limit = pro_above[i] + (pro_at_or_above[i] - pro_above[i]) * step / (fpr_at_or_above[i] - fpr_above[i])
        area += step * (pro_above[i] + pro_limit) / 2
        end = fpr_limit
    return float(area / end) if end > 0 else math.nan

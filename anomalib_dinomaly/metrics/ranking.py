"""AUROC, AP and F1-max of scores against binary labels from one sort, as the official evaluation defines them.

The official evaluation calls scikit-learn (``roc_auc_score``, ``average_precision_score``, and F1 from
``precision_recall_curve`` as ``2PR / (P + R + 1e-7)``). Here the three come from the normal scores sorted
once and the anomalous scores, which are few: every threshold that changes recall is an anomalous score,
so each metric is a sum over the distinct anomalous scores, with ties counted as scikit-learn counts them.
That is exact and needs memory for the scores only, where a generic curve over all pixels sorts the
pixels and their labels together several times.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["F1_EPSILON", "ranking_metrics"]

#: The official F1's denominator term (``2PR / (P + R + 1e-7)``): a perfect F1 reads 0.99999995.
F1_EPSILON = 1e-7


def ranking_metrics(normal_sorted: np.ndarray, anomalous: np.ndarray) -> tuple[float, float, float]:
    """AUROC, average precision and F1-max, an item being predicted anomalous when its score is ``>=`` a threshold.

    Args:
        normal_sorted: (N,) scores of the normal items, sorted ascending.
        anomalous: (P,) scores of the anomalous items, any order.

    Returns:
        ``(auroc, ap, f1_max)``; NaN for all three when ``N`` or ``P`` is 0 (scikit-learn raises there).
    """
    normal_count, anomalous_count = normal_sorted.size, anomalous.size
    if normal_count == 0 or anomalous_count == 0:
        return math.nan, math.nan, math.nan
    anomalous = np.sort(anomalous)
    below = np.searchsorted(normal_sorted, anomalous, side="left")
    not_above = np.searchsorted(normal_sorted, anomalous, side="right")
    # Mann-Whitney: each (anomalous, normal) pair ranked correctly counts 1, a tie 1/2 (the ROC's trapezoids).
    pairs = below.sum(dtype=np.int64) + 0.5 * (not_above - below).sum(dtype=np.int64)
    auroc = float(pairs) / (float(normal_count) * float(anomalous_count))

    # Distinct anomalous scores, highest first: recall steps there, and F1 peaks at one of them.
    descending = anomalous[::-1]
    ends = np.append(np.flatnonzero(descending[1:] != descending[:-1]) + 1, anomalous_count)
    true_positives = ends.astype(np.float64)  # anomalous items >= each distinct value
    recall_steps = np.diff(true_positives, prepend=0.0)
    false_positives = normal_count - np.searchsorted(normal_sorted, descending[ends - 1], side="left")
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / anomalous_count
    ap = float(np.sum(recall_steps / anomalous_count * precision))
    f1_max = float(np.max(2 * precision * recall / (precision + recall + F1_EPSILON)))
    return auroc, ap, f1_max

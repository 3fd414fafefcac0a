"""The paper's evaluation per category (seven metrics, unweighted mean, tables) and per-category thresholds."""

from anomalib_dinomaly.metrics.evaluator import CategoryEvaluator
from anomalib_dinomaly.metrics.functional import (
    IMAGE_METRICS,
    PAPER_METRICS,
    PIXEL_METRICS,
    image_metrics,
    paper_metrics,
    pixel_metrics,
)
from anomalib_dinomaly.metrics.table import PAPER_RESULTS, CategoryTable
from anomalib_dinomaly.metrics.thresholds import CategoryThresholds, apply_thresholds

__all__ = [
    "IMAGE_METRICS",
    "PAPER_METRICS",
    "PAPER_RESULTS",
    "PIXEL_METRICS",
    "CategoryEvaluator",
    "CategoryTable",
    "CategoryThresholds",
    "apply_thresholds",
    "image_metrics",
    "paper_metrics",
    "pixel_metrics",
]

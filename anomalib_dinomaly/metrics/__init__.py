"""The paper's evaluation per category (seven metrics, unweighted mean, tables) and per-category thresholds."""

from anomalib_dinomaly.metrics.evaluator import CategoryEvaluator
from anomalib_dinomaly.metrics.functional import image_metrics, paper_metrics, pixel_metrics
from anomalib_dinomaly.metrics.names import EXACT_AUPRO, IMAGE_METRICS, PAPER_METRICS, PIXEL_METRICS, REPORTED_METRICS
from anomalib_dinomaly.metrics.table import PAPER_RESULTS, CategoryTable
from anomalib_dinomaly.metrics.category_thresholds import CategoryThresholds
from anomalib_dinomaly.metrics.threshold_labels import apply_thresholds

__all__ = [
    "EXACT_AUPRO",
    "IMAGE_METRICS",
    "PAPER_METRICS",
    "PAPER_RESULTS",
    "PIXEL_METRICS",
    "REPORTED_METRICS",
    "CategoryEvaluator",
    "CategoryTable",
    "CategoryThresholds",
    "apply_thresholds",
    "image_metrics",
    "paper_metrics",
    "pixel_metrics",
]

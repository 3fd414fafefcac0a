"""Names of the metrics in the per-category table."""

from __future__ import annotations

__all__ = ["EXACT_AUPRO", "IMAGE_METRICS", "PAPER_METRICS", "PIXEL_METRICS", "REPORTED_METRICS"]

IMAGE_METRICS = ("image_AUROC", "image_AP", "image_F1Max")
#: ``pixel_AUPRO`` is the paper's (official) AUPRO: 200 sampled thresholds (see :mod:`.aupro`).
PIXEL_METRICS = ("pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO")
#: The seven metrics of the paper's tables, in their order.
PAPER_METRICS = IMAGE_METRICS + PIXEL_METRICS
#: AUPRO over every threshold up to exactly FPR 0.3 (MVTec-AD's definition, anomalib's ``AUPRO``).
EXACT_AUPRO = "pixel_AUPRO_exact"
#: Every column of the per-category table: the paper's seven, then the exact AUPRO.
REPORTED_METRICS = (*PAPER_METRICS, EXACT_AUPRO)

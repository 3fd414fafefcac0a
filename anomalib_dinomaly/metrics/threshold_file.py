"""The per-category thresholds file: raw and post-processed thresholds as JSON in the results folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from anomalib.post_processing import PostProcessor

from anomalib_dinomaly.metrics.threshold_normalisation import normalized_thresholds

__all__ = ["THRESHOLDS_FILE", "write_thresholds"]

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "category_thresholds.json"


def write_thresholds(
    path: Path,
    image: dict[str, float],
    pixel: dict[str, float],
    post_processor: PostProcessor | None,
) -> Path:
    """Write ``{"raw": {"image", "pixel"}, "normalized": {"image", "pixel"}}`` to ``path``; returns it."""
    normalized_image, normalized_pixel = normalized_thresholds(image, pixel, post_processor)
    content = {
        "raw": {"image": image, "pixel": pixel},
        "normalized": {"image": normalized_image, "pixel": normalized_pixel},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")
    logger.info("Per-category thresholds written to %s", path)
    return path

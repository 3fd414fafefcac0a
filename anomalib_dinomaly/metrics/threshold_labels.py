"""Labelling scores or maps with one threshold per category."""

from __future__ import annotations

from typing import Any

import torch
from anomalib.post_processing import PostProcessor

__all__ = ["apply_thresholds", "with_global_fallback"]


def apply_thresholds(scores: torch.Tensor, categories: list[str], thresholds: dict[str, float]) -> torch.Tensor:
    """Labels ``scores > thresholds[category]``.

    Args:
        scores: (B,) image scores, or (B, ...) maps.
        categories: B category names.
        thresholds: threshold per category, in the same score space as ``scores``.

    Returns:
        bool tensor shaped like ``scores``.

    Raises:
        KeyError: a category without a threshold.
    """
    missing = sorted(set(categories) - set(thresholds))
    if missing:
        msg = f"No threshold for categories {missing}; known: {sorted(thresholds)}."
        raise KeyError(msg)
    limits = torch.tensor([thresholds[name] for name in categories], dtype=scores.dtype, device=scores.device)
    return scores > limits.reshape(-1, *([1] * (scores.dim() - 1)))


def with_global_fallback(
    thresholds: dict[str, float],
    categories: list[str],
    post_processor: Any,  # noqa: ANN401
    attribute: str,
) -> dict[str, float]:
    """``thresholds`` plus, for categories never validated, the post-processor's global raw threshold.

    Args:
        thresholds: raw thresholds per category.
        categories: the categories to label.
        post_processor: the model's post-processor (an anomalib ``PostProcessor``, else no fallback).
        attribute: ``"image_threshold"`` or ``"pixel_threshold"``.

    Raises:
        KeyError: unseen categories and no post-processor threshold to fall back on.
    """
    unseen = set(categories) - set(thresholds)
    if not unseen:
        return thresholds
    if not isinstance(post_processor, PostProcessor):
        msg = f"No threshold for categories {sorted(unseen)} and no global post-processor threshold."
        raise KeyError(msg)
    return thresholds | dict.fromkeys(unseen, float(getattr(post_processor, attribute)))

"""Raw thresholds mapped into the post-processed score space that the exported model outputs."""

from __future__ import annotations

import torch
from anomalib.data import InferenceBatch
from anomalib.post_processing import PostProcessor

__all__ = ["normalized_thresholds"]


def normalized_thresholds(
    image: dict[str, float],
    pixel: dict[str, float],
    post_processor: PostProcessor | None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Image and pixel thresholds per category passed through the post-processor's normalisation.

    Without a normalising post-processor the raw thresholds are returned.
    """
    if not isinstance(post_processor, PostProcessor) or not post_processor.enable_normalization:
        return dict(image), dict(pixel)
    device = post_processor.image_min.device
    scores = torch.tensor(list(image.values()), dtype=torch.float32, device=device)
    maps = torch.tensor(list(pixel.values()), dtype=torch.float32, device=device)
    with torch.no_grad():
        output = post_processor(InferenceBatch(pred_score=scores, anomaly_map=maps))
    return (
        dict(zip(image, output.pred_score.cpu().tolist(), strict=True)),
        dict(zip(pixel, output.anomaly_map.cpu().tolist(), strict=True)),
    )

"""Anomaly maps and image scores from fused encoder/decoder feature groups, as Dinomaly evaluates them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

# The official evaluation: maps at 256 x 256, Gaussian blur k 5, sigma 4, score = mean of the top 1 %.
DEFAULT_EVAL_SIZE = 256
DEFAULT_BLUR_KERNEL_SIZE = 5
DEFAULT_BLUR_SIGMA = 4.0
DEFAULT_TOP_RATIO = 0.01


def cosine_distance_maps(encoder_groups: Sequence[torch.Tensor], decoder_groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-group ``1 - cos`` over channels.

    Args:
        encoder_groups, decoder_groups: G tensors of shape (B, D, h, w).

    Returns:
        (B, G, h, w) distances.
    """
    return torch.stack(
        [1 - F.cosine_similarity(en, de, dim=1) for en, de in zip(encoder_groups, decoder_groups, strict=True)],
        dim=1,
    )


class AnomalyMaps(NamedTuple):
    """Every stage of the map computation.

    Attributes:
        per_group: (B, G, h, w) cosine distance per group at feature resolution.
        input_map: (B, 1, H, W) groups upsampled (align_corners=True) to the input size and averaged;
            the official ``cal_anomaly_maps`` output, before any smoothing.
        eval_map: (B, 1, S, S) ``input_map`` resized to the evaluation size (256) and blurred: the map
            the paper's pixel metrics and image score use.
        anomaly_map: (B, 1, H, W) ``eval_map`` resized back to the input size, aligned with the
            pre-processed image and mask; what anomalib receives.
        pred_score: (B,) mean of the top ``top_ratio`` of ``eval_map``.
    """

    per_group: torch.Tensor
    input_map: torch.Tensor
    eval_map: torch.Tensor
    anomaly_map: torch.Tensor
    pred_score: torch.Tensor


class AnomalyMapGenerator(nn.Module):
    """Turns fused feature groups into a smoothed anomaly map and an image score.

    The blur is anomalib's ``GaussianBlur2d`` with zero padding (``border_type="constant"``), as the official
    evaluation; its default reflection padding would change the golden maps' borders by up to 0.61.

    Args:
        eval_size: side of the square map the score is taken on (256 in the paper); ``None`` keeps the
            input size.
        kernel_size: Gaussian kernel size (5).
        sigma: Gaussian sigma in pixels of the evaluation map (4).
        top_ratio: fraction of pixels averaged into the image score (0.01); 0 means the maximum.
    """

    def __init__(
        self,
        eval_size: int | None = DEFAULT_EVAL_SIZE,
        kernel_size: int = DEFAULT_BLUR_KERNEL_SIZE,
        sigma: float = DEFAULT_BLUR_SIGMA,
        top_ratio: float = DEFAULT_TOP_RATIO,
    ) -> None:
        super().__init__()
        if eval_size is not None and eval_size <= 0:
            msg = f"eval_size must be positive or None, got {eval_size}."
            raise ValueError(msg)
        if not 0.0 <= top_ratio <= 1.0:
            msg = f"top_ratio must be in [0, 1], got {top_ratio}."
            raise ValueError(msg)
        if kernel_size % 2 == 0 or kernel_size < 1:
            msg = f"kernel_size must be a positive odd number, got {kernel_size}."
            raise ValueError(msg)
        self.eval_size = eval_size
        self.top_ratio = top_ratio
        # Imported here: importing anomalib.models registers the plugin, whose module imports this one.
        from anomalib.models.components.filters import GaussianBlur2d

        self.blur = GaussianBlur2d(sigma=sigma, channels=1, kernel_size=kernel_size, border_type="constant")
        # Rebuilt from kernel_size and sigma, so kept out of the state dict (checkpoints hold no kernel).
        kernel = self.blur.kernel
        del self.blur.kernel
        self.blur.register_buffer("kernel", kernel, persistent=False)

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """Gaussian blur with zero padding: (B, 1, H, W) -> (B, 1, H, W)."""
        return self.blur(maps)

    def score(self, eval_map: torch.Tensor) -> torch.Tensor:
        """Mean of the top ``top_ratio`` pixels (official: ``int(N * ratio)``, at least 1); topk, not sort, so it exports.

        Args:
            eval_map: (B, 1, S, S).

        Returns:
            (B,) scores.
        """
        flat = eval_map.flatten(1)
        k = max(1, int(flat.shape[1] * self.top_ratio))
        return torch.topk(flat, k, dim=1).values.mean(dim=1)

    def compute(
        self,
        encoder_groups: Sequence[torch.Tensor],
        decoder_groups: Sequence[torch.Tensor],
        image_size: tuple[int, int],
    ) -> AnomalyMaps:
        """All stages of the map for G groups of (B, D, h, w) features and a (H, W) input size."""
        per_group = cosine_distance_maps(encoder_groups, decoder_groups)
        input_map = F.interpolate(per_group, size=image_size, mode="bilinear", align_corners=True)
        input_map = input_map.mean(dim=1, keepdim=True)
        eval_size = (self.eval_size, self.eval_size) if self.eval_size else tuple(image_size)
        eval_map = input_map
        if tuple(eval_size) != tuple(image_size):
            eval_map = F.interpolate(input_map, size=eval_size, mode="bilinear", align_corners=False)
        eval_map = self.smooth(eval_map)
        anomaly_map = eval_map
        if tuple(eval_size) != tuple(image_size):
            anomaly_map = F.interpolate(eval_map, size=image_size, mode="bilinear", align_corners=False)
        return AnomalyMaps(per_group, input_map, eval_map, anomaly_map, self.score(eval_map))

    def forward(
        self,
        encoder_groups: Sequence[torch.Tensor],
        decoder_groups: Sequence[torch.Tensor],
        image_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(anomaly_map (B, 1, H, W), pred_score (B,))``."""
        maps = self.compute(encoder_groups, decoder_groups, image_size)
        return maps.anomaly_map, maps.pred_score

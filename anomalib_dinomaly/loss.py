"""Loose reconstruction loss: one global cosine per image and group, with hard-mining gradient scaling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

# The official hard mining: p rises linearly to 0.9 over 1,000 steps; easy points keep 0.1 of their gradient.
DEFAULT_HARD_MINING_FINAL = 0.9
DEFAULT_HARD_MINING_RAMP_STEPS = 1000
DEFAULT_HARD_MINING_FACTOR = 0.1


def hard_mining_fraction(
    step: int,
    final: float = DEFAULT_HARD_MINING_FINAL,
    ramp_steps: int = DEFAULT_HARD_MINING_RAMP_STEPS,
) -> float:
    """Fraction ``p`` of the points treated as easy (gradient scaled down) at optimizer step ``step`` (0-based).

    ``p = min(final * step / ramp_steps, final)``: 0 at the first step, ``final`` from ``ramp_steps`` on. The
    official code calls it a percent (``hm_percent``); it is a fraction in [0, 1).
    """
    if ramp_steps <= 0:
        return final
    return min(final * step / ramp_steps, final)


class HardMiningThreshold(NamedTuple):
    """Where hard mining splits one group's points into hard and easy ones.

    Attributes:
        point_distance: (B, 1, h, w) per-point cosine distance ``1 - cos(en, de)`` over channels.
        k: number of hard points, ``max(1, int(B * h * w * (1 - p)))``.
        threshold: scalar, the k-th largest distance; points below it are easy.
    """

    point_distance: torch.Tensor
    k: int
    threshold: torch.Tensor


class GlobalCosineHardMiningLoss(nn.Module):
    """Global cosine loss with hard mining (official ``global_cosine_hm_percent``).

    For each group the loss is ``mean_b(1 - cos(en_b.flatten(), de_b.flatten()))``; the total is the
    mean over groups. Its value does not depend on ``p``: mining only rescales gradients. Points whose
    per-pixel cosine distance is below the k-th largest distance of the whole batch,
    ``k = int(B * h * w * (1 - p))``, get ``factor`` times their gradient.

    Args:
        factor: gradient multiplier for the easy points (0.1).
    """

    def __init__(self, factor: float = DEFAULT_HARD_MINING_FACTOR) -> None:
        super().__init__()
        self.factor = factor

    def forward(
        self,
        encoder_groups: Sequence[torch.Tensor],
        decoder_groups: Sequence[torch.Tensor],
        p: float = DEFAULT_HARD_MINING_FINAL,
    ) -> torch.Tensor:
        """Loss for G groups of (B, D, h, w) features; gradients flow into the decoder groups only.

        Args:
            encoder_groups: G tensors (B, D, h, w); detached.
            decoder_groups: G tensors (B, D, h, w).
            p: fraction of easy points, in [0, 1) (see :func:`hard_mining_fraction`).

        Returns:
            Scalar loss.
        """
        if not 0.0 <= p < 1.0:
            msg = f"hard-mining fraction p must be in [0, 1), got {p}."
            raise ValueError(msg)
        loss = encoder_groups[0].new_zeros(())
        for en, de in zip(encoder_groups, decoder_groups, strict=True):
            en = en.detach()
            batch = en.shape[0]
            mining = self.hard_mining_threshold(en, de, p)
            easy = mining.point_distance < mining.threshold
            loss = loss + torch.mean(1 - F.cosine_similarity(en.reshape(batch, -1), de.reshape(batch, -1), dim=1))
            if de.requires_grad:
                de.register_hook(_scale_gradient(easy, self.factor))
        return loss / len(encoder_groups)

    @staticmethod
    @torch.no_grad()
    def hard_mining_threshold(encoder_group: torch.Tensor, decoder_group: torch.Tensor, p: float) -> HardMiningThreshold:
        """Per-point distances of one group (B, D, h, w) and the threshold below which points count as easy."""
        point_distance = 1 - F.cosine_similarity(encoder_group, decoder_group, dim=1).unsqueeze(1)
        k = max(1, int(point_distance.numel() * (1 - p)))
        threshold = torch.topk(point_distance.reshape(-1), k=k).values[-1]
        return HardMiningThreshold(point_distance, k, threshold)


def _scale_gradient(mask: torch.Tensor, factor: float):  # noqa: ANN202
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, grad * factor, grad)

    return hook

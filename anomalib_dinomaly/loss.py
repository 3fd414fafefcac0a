"""Loose reconstruction loss: one global cosine per image and group, with hard-mining gradient scaling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

# The official hard mining: p rises linearly to 0.9 over 1,000 steps; easy points keep 0.1 of their gradient.
DEFAULT_HARD_MINING_FINAL = 0.9
DEFAULT_HARD_MINING_RAMP_STEPS = 1000
DEFAULT_HARD_MINING_FACTOR = 0.1


def hard_mining_percent(
    step: int,
    final: float = DEFAULT_HARD_MINING_FINAL,
    ramp_steps: int = DEFAULT_HARD_MINING_RAMP_STEPS,
) -> float:
    """Share of easy points whose gradient is scaled down at optimizer step ``step`` (0-based).

    ``p = min(final * step / ramp_steps, final)``: 0 at the first step, ``final`` from ``ramp_steps`` on.
    """
    if ramp_steps <= 0:
        return final
    return min(final * step / ramp_steps, final)


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
            p: hard-mining percent in [0, 1).

        Returns:
            Scalar loss.
        """
        if not 0.0 <= p < 1.0:
            msg = f"hard-mining percent p must be in [0, 1), got {p}."
            raise ValueError(msg)
        loss = encoder_groups[0].new_zeros(())
        for en, de in zip(encoder_groups, decoder_groups, strict=True):
            en = en.detach()
            batch = en.shape[0]
            with torch.no_grad():
                point_dist = 1 - F.cosine_similarity(en, de, dim=1).unsqueeze(1)  # (B, 1, h, w)
                k = max(1, int(point_dist.numel() * (1 - p)))
                threshold = torch.topk(point_dist.reshape(-1), k=k).values[-1]
                easy = point_dist < threshold
            loss = loss + torch.mean(1 - F.cosine_similarity(en.reshape(batch, -1), de.reshape(batch, -1), dim=1))
            if de.requires_grad:
                de.register_hook(_scale_gradient(easy, self.factor))
        return loss / len(encoder_groups)


def _scale_gradient(mask: torch.Tensor, factor: float):  # noqa: ANN202
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, grad * factor, grad)

    return hook

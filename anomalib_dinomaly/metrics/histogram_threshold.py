"""F1-adaptive threshold from a fixed histogram: memory independent of the number of validation pixels.

anomalib's ``F1AdaptiveThreshold`` keeps every value it sees and sorts them at the end: right for image
scores (one per image), but for pixels that is 6 MB per 392 x 392 validation image. Here every value
falls into one of 2**20 bins of the float32 number line (the top 20 bits of its order-preserving integer
key: sign, exponent and 11 mantissa bits, so each bin spans a relative width of at most 2**-11 whatever
the scale of the maps), counted separately for normal and anomalous pixels. The threshold is the lower
edge of the bin that maximises F1 when everything from that bin up is called anomalous; it is within one
bin of the exact F1-optimal value. The counts add up across batches and DDP ranks (a ``sum``), so every
rank computes the same threshold.
"""

from __future__ import annotations

import logging

import torch
from anomalib.metrics import AnomalibMetric
from anomalib.metrics.threshold import Threshold

__all__ = ["HistogramF1AdaptiveThreshold", "float_bin_edges", "float_bins"]

logger = logging.getLogger(__name__)

#: Bits of the float32 key that are dropped: 2**(32 - 12) bins.
DROPPED_BITS = 12
BINS = 1 << (32 - DROPPED_BITS)
_SIGN_FLIP = 0x7FFFFFFF


def float_bins(values: torch.Tensor) -> torch.Tensor:
    """The histogram bin of every float32 value, increasing with the value.

    Args:
        values: float tensor of any shape (converted to float32).

    Returns:
        int32 tensor of the same shape, in ``[0, BINS)``.
    """
    bits = values.float().contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & _SIGN_FLIP)  # negative floats' bits reversed: signed order = value order
    return (ordered >> DROPPED_BITS) + BINS // 2


def float_bin_edges(bins: torch.Tensor) -> torch.Tensor:
    """The smallest float32 value of each bin (inverse of :func:`float_bins` at the bin's lower edge).

    Args:
        bins: int64 tensor of bin indices.

    Returns:
        float32 tensor of the same shape.
    """
    ordered = ((bins.long() - BINS // 2) << DROPPED_BITS).to(torch.int32)
    return (ordered ^ ((ordered >> 31) & _SIGN_FLIP)).view(torch.float32)


class _HistogramF1AdaptiveThreshold(Threshold):
    """F1-optimal threshold of values against binary targets, from per-class histograms.

    The threshold ``t`` returned calls a value anomalous when ``value > t`` (as anomalib's post-processor
    applies it): ``t`` is the largest float32 below the chosen bin's lower edge. Without anomalous targets it
    is the largest value seen, without normal targets the smallest (anomalib's fallbacks).
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.add_state("counts", torch.zeros(2, BINS, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("low", torch.tensor(float("inf")), dist_reduce_fx="min")
        self.add_state("high", torch.tensor(float("-inf")), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch.

        Args:
            preds: (B, ...) float values (e.g. (B, H, W) anomaly maps).
            target: same number of elements, anomalous where > 0.
        """
        values = preds.detach().reshape(-1)
        index = float_bins(values)
        index += (target.detach().reshape(-1) > 0).to(torch.int32) << (32 - DROPPED_BITS)  # anomalous: second half
        self.counts += torch.bincount(index, minlength=2 * BINS).view(2, BINS).to(self.counts.device)
        self.low = torch.minimum(self.low, values.min().float())
        self.high = torch.maximum(self.high, values.max().float())

    def compute(self) -> torch.Tensor:
        """The threshold (scalar float32 tensor)."""
        normal, anomalous = self.counts[0], self.counts[1]
        if not bool(anomalous.any()):
            logger.warning("No anomalous pixels in the validation set: the pixel threshold is the highest value seen.")
            return self.high.clone()
        if not bool(normal.any()):
            logger.warning("No normal pixels in the validation set: the pixel threshold is the lowest value seen.")
            return self.low.clone()
        # Everything in bin b or above called anomalous: counts from the top.
        true_positives = anomalous.flip(0).cumsum(0).flip(0).double()
        false_positives = normal.flip(0).cumsum(0).flip(0).double()
        f1 = 2 * true_positives / (true_positives + false_positives + true_positives[0])
        best = BINS - 1 - torch.argmax(f1.flip(0))  # the highest of equal bins: just below the values it calls anomalous
        edge = float_bin_edges(best.reshape(1))
        return torch.nextafter(edge, torch.tensor(float("-inf")))[0].to(self.high.device)


class HistogramF1AdaptiveThreshold(AnomalibMetric, _HistogramF1AdaptiveThreshold):  # type: ignore[misc]
    """:class:`_HistogramF1AdaptiveThreshold` reading its inputs from batch fields (``fields=[preds, target]``)."""

"""anomalib's post-processor with an adaptive F1 threshold that works under distributed (DDP) validation.

anomalib 2.7's ``F1AdaptiveThreshold`` checks whether the validation set holds normal and anomalous
samples with ``any(1 in batch for batch in self.target)``. On one device ``self.target`` is a list of
per-batch tensors and the check is vectorised. Under DDP, torchmetrics synchronises the state before
``compute`` and concatenates that list into one flat tensor, so the same expression runs a Python
loop over every gathered label: one step per pixel for the pixel threshold (microseconds per element on
a CPU, see benchmarks/README.md; a device synchronisation per element on GPU), which stalls validation on
real data sets.
anomalib issue #3362 reports the built-in Dinomaly failing in this metric on two GPUs; anomalib PR #3569
("DDP returns tensor in multi-gpu setting") made ``handle_mac`` accept the tensor state but kept the loop.

The classes here keep anomalib's threshold, normalisation and checkpoint format, and only make those
checks vectorised for both state layouts. Every rank computes the same synchronised threshold and
min/max statistics, because torchmetrics gathers the states of all ranks before ``compute``.
"""

from __future__ import annotations

import torch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor
from torchmetrics.utilities.data import dim_zero_cat


class DistributedF1AdaptiveThreshold(F1AdaptiveThreshold):
    """``F1AdaptiveThreshold`` whose class-presence checks are tensor operations.

    The threshold is anomalib's: the score that maximises F1 on the (all-rank) validation set; the
    highest score if there are no anomalous samples; the lowest if there are no normal ones.
    """

    def _targets(self) -> torch.Tensor | None:
        """All labels seen so far, flat; ``None`` before the first update."""
        target = self.target
        if isinstance(target, list):
            if not target:
                return None
            target = dim_zero_cat(target)
        return target.flatten()

    def _has_anomalous_samples(self) -> bool:
        """Whether any label is 1 (one vectorised reduction, whatever the state layout)."""
        if self.thresholds is not None:
            return super()._has_anomalous_samples()
        target = self._targets()
        return target is not None and bool((target == 1).any())

    def _has_normal_samples(self) -> bool:
        """Whether any label is 0."""
        if self.thresholds is not None:
            return super()._has_normal_samples()
        target = self._targets()
        return target is not None and bool((target == 0).any())


class DinomalyPostProcessor(PostProcessor):
    """anomalib's ``PostProcessor`` (normalisation, adaptive thresholds, sensitivities) safe under DDP.

    Same arguments, buffers and checkpoint keys as :class:`anomalib.post_processing.PostProcessor`,
    so checkpoints move freely between the two; only the threshold metrics are replaced.

    Args:
        enable_normalization: min-max normalise scores and maps around the threshold.
        enable_thresholding: compute adaptive F1 thresholds on the validation set.
        enable_threshold_matching: use the image threshold for pixels when no pixel threshold exists, and back.
        image_sensitivity, pixel_sensitivity: 0.5 keeps the F1 threshold; higher flags more as anomalous.
    """

    def __init__(
        self,
        enable_normalization: bool = True,
        enable_thresholding: bool = True,
        enable_threshold_matching: bool = True,
        image_sensitivity: float = 0.5,
        pixel_sensitivity: float = 0.5,
    ) -> None:
        super().__init__(
            enable_normalization=enable_normalization,
            enable_thresholding=enable_thresholding,
            enable_threshold_matching=enable_threshold_matching,
            image_sensitivity=image_sensitivity,
            pixel_sensitivity=pixel_sensitivity,
        )
        self._image_threshold_metric = DistributedF1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False)
        self._pixel_threshold_metric = DistributedF1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False)

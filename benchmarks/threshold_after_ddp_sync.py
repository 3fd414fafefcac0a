"""Time the pixel-level F1 adaptive threshold on the state layout that DDP synchronisation produces.

After torchmetrics gathers the ranks' states, ``preds`` and ``target`` are single flat tensors instead of
lists of batches. anomalib's ``F1AdaptiveThreshold`` then checks for anomalous pixels with a Python loop
over every element; :class:`anomalib_dinomaly.post_processor.DistributedF1AdaptiveThreshold` does it in
one reduction. Usage: ``python benchmarks/threshold_after_ddp_sync.py --pixels 1000000``.
"""

from __future__ import annotations

import argparse
import time

import torch
from anomalib.metrics import F1AdaptiveThreshold

from anomalib_dinomaly.post_processor import DistributedF1AdaptiveThreshold


def synchronised(metric_class: type, pixels: int) -> F1AdaptiveThreshold:
    """A pixel threshold metric holding ``pixels`` gathered scores: normal images first, as in MVTec order."""
    metric = metric_class(fields=["anomaly_map", "gt_mask"], strict=False)
    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(pixels, dtype=torch.bool)
    target[-pixels // 20 :] = True  # the anomalous pixels come last
    metric.preds = torch.rand(pixels, generator=generator) + target.float() * 0.5
    metric.target = target
    metric._update_count = 1
    return metric


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pixels", type=int, default=1_000_000)
    args = parser.parse_args()
    for metric_class in (F1AdaptiveThreshold, DistributedF1AdaptiveThreshold):
        metric = synchronised(metric_class, args.pixels)
        start = time.perf_counter()
        threshold = metric.compute()
        elapsed = time.perf_counter() - start
        print(f"{metric_class.__name__:32s} {args.pixels:>10,d} pixels: {elapsed:7.2f} s, threshold {float(threshold):.4f}")


if __name__ == "__main__":
    main()

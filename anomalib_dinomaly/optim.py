"""StableAdamW and the warm-up + cosine learning-rate schedule of the official Dinomaly training.

The optimizer is anomalib's ``StableAdamW`` (the one its own Dinomaly uses), with the paper's defaults. The
schedule is ours: anomalib's ``WarmCosineScheduler`` gives every parameter group one absolute schedule
(``base_value``), where parameter groups with different learning rates each need their own; on the paper's
10,000 steps the two agree within 1e-15 relative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

# The official training: StableAdamW lr 2e-3, wd 1e-4, eps 1e-10 (unified; 1e-8 class-separated), AMSGrad;
# 100 linear warm-up steps, then cosine down to a tenth of the learning rate.
DEFAULT_LR = 2e-3
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EPS = 1e-10
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_AMSGRAD = True
DEFAULT_CLIP_THRESHOLD = 1.0
DEFAULT_WARMUP_STEPS = 100
DEFAULT_FINAL_LR_RATIO = 0.1

# Imported after the defaults: importing anomalib.models registers the plugin (see registry.py), whose Lightning
# module imports the defaults above from this module, which may still be loading.
from anomalib.models.image.dinomaly.components.optimizer import StableAdamW as _AnomalibStableAdamW  # noqa: E402


class StableAdamW(_AnomalibStableAdamW):
    """anomalib's StableAdamW with the official Dinomaly defaults.

    AdamW whose step is divided by ``max(1, RMS(grad / denom) / clip_threshold)`` per tensor: decoupled weight
    decay, Adam moments (AMSGrad's running maximum if enabled), ``denom = sqrt(v) / sqrt(1 - b2^t) + eps``.

    Args:
        params: parameters or parameter groups (each group may set its own ``lr``, ``amsgrad``, ...).
        lr: learning rate (2e-3).
        betas: Adam betas (0.9, 0.999).
        eps: added to the bias-corrected denominator (1e-10 unified, 1e-8 class-separated).
        weight_decay: decoupled weight decay (1e-4).
        amsgrad: use the running maximum of the second moment (True).
        clip_threshold: RMS above which the step is scaled down (1.0).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = DEFAULT_LR,
        betas: tuple[float, float] = DEFAULT_BETAS,
        eps: float = DEFAULT_EPS,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        amsgrad: bool = DEFAULT_AMSGRAD,
        clip_threshold: float = DEFAULT_CLIP_THRESHOLD,
    ) -> None:
        if clip_threshold <= 0:
            msg = f"StableAdamW clip_threshold must be positive, got {clip_threshold}."
            raise ValueError(msg)
        super().__init__(
            params,
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            clip_threshold=clip_threshold,
        )


def warmup_cosine_lr(
    step: int,
    base_lr: float,
    final_lr: float,
    total_steps: int,
    warmup_steps: int = DEFAULT_WARMUP_STEPS,
    warmup_start_lr: float = 0.0,
) -> float:
    """Learning rate used at optimizer step ``step`` (0-based) by the official ``WarmCosineScheduler``.

    Linear warm-up ``linspace(warmup_start_lr, base_lr, warmup_steps)`` (its end point included), then
    ``final + (base - final) * (1 + cos(pi * i / (total - warmup))) / 2``; ``final_lr`` after ``total_steps``.
    """
    if step >= total_steps:
        return final_lr
    if step < warmup_steps:
        if warmup_steps == 1:
            return base_lr
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / (warmup_steps - 1)
    cosine_steps = total_steps - warmup_steps
    progress = (step - warmup_steps) / cosine_steps
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))


class WarmupCosineLR(LRScheduler):
    """Per-step warm-up + cosine schedule; step it after every optimizer step.

    The learning rate of each group follows :func:`warmup_cosine_lr` from the group's initial lr
    down to ``final_lr_ratio`` times it (2e-3 -> 2e-4 in the paper).

    Args:
        optimizer: the wrapped optimizer.
        total_steps: length of the cosine schedule, warm-up included (10,000 in the paper).
        warmup_steps: linear warm-up length (100).
        final_lr_ratio: final lr as a fraction of the initial lr (0.1).
        warmup_start_lr: lr at step 0 (0).
        last_epoch: index of the last step, for resuming (-1 for a fresh start).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = DEFAULT_WARMUP_STEPS,
        final_lr_ratio: float = DEFAULT_FINAL_LR_RATIO,
        warmup_start_lr: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps <= 0 or warmup_steps < 0:
            msg = f"total_steps must be positive and warmup_steps non-negative, got {total_steps}, {warmup_steps}."
            raise ValueError(msg)
        self.total_steps = total_steps
        self.warmup_steps = min(warmup_steps, total_steps)
        self.final_lr_ratio = final_lr_ratio
        self.warmup_start_lr = warmup_start_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # noqa: D102
        return [
            warmup_cosine_lr(
                self.last_epoch,
                base_lr,
                base_lr * self.final_lr_ratio,
                self.total_steps,
                self.warmup_steps,
                self.warmup_start_lr,
            )
            for base_lr in self.base_lrs
        ]

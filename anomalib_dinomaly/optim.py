"""StableAdamW and the warm-up + cosine learning-rate schedule of the official Dinomaly and Dinomaly2 training.

The optimizer is anomalib's ``StableAdamW`` (the one its own Dinomaly uses), with the paper's defaults. The
schedule is ours: anomalib's ``WarmCosineScheduler`` gives every parameter group one absolute schedule
(``base_value``), where parameter groups with different learning rates each need their own; on the paper's
10,000 steps the two agree within 1e-15 relative. Dinomaly2's preview differs in the warm-up (``lr * step / warmup``)
and, on a NaN/Inf gradient, skips only part of a step; both are options here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

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
#: What :class:`StableAdamW` does with a NaN/Inf gradient (see its docstring); anomalib's (official) has no check.
NONFINITE_GRAD_POLICIES = ("ignore", "skip_step", "preview")

logger = logging.getLogger(__name__)

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
        nonfinite_grads: what a NaN/Inf gradient does. ``"ignore"`` (anomalib's and the official Dinomaly
            optimiser): no check, the values enter the moments. ``"skip_step"``: the whole step is skipped, no
            parameter or state changes, and a warning is logged. ``"preview"``: the Dinomaly2 preview code's partial
            skip, for parity: parameters before the first non-finite gradient (group, then parameter order) are
            updated, that one and all later ones are not, so their step counts fall behind.
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
        nonfinite_grads: str = "ignore",
    ) -> None:
        if nonfinite_grads not in NONFINITE_GRAD_POLICIES:
            msg = f"nonfinite_grads must be one of {NONFINITE_GRAD_POLICIES}, got {nonfinite_grads!r}."
            raise ValueError(msg)
        self.nonfinite_grads = nonfinite_grads
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

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step of anomalib's StableAdamW, after the closure (if any), with the ``nonfinite_grads`` policy."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.nonfinite_grads == "ignore":
            super().step()
            return loss
        with_grad = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        finite = torch.stack([torch.isfinite(p.grad).all() for p in with_grad]).tolist() if with_grad else []
        if all(finite):
            super().step()
            return loss
        if self.nonfinite_grads == "skip_step":
            logger.warning("StableAdamW: NaN/Inf in the gradients; skipping this step (no parameter changes).")
            return loss
        logger.warning("StableAdamW: NaN/Inf in a gradient; skipping it and every later parameter (preview).")
        skipped = with_grad[finite.index(False) :]
        grads = [p.grad for p in skipped]
        for param in skipped:  # a parameter without a gradient is left alone, state included
            param.grad = None
        try:
            super().step()
        finally:
            for param, grad in zip(skipped, grads, strict=True):
                param.grad = grad
        return loss


def warmup_cosine_lr(
    step: int,
    base_lr: float,
    final_lr: float,
    total_steps: int,
    warmup_steps: int = DEFAULT_WARMUP_STEPS,
    warmup_start_lr: float = 0.0,
    warmup_includes_end: bool = True,
) -> float:
    """Learning rate used at optimizer step ``step`` (0-based) by the official schedulers.

    Linear warm-up from ``warmup_start_lr``, then ``final + (base - final) * (1 + cos(pi * i / (total - warmup))) / 2``
    for ``i = step - warmup``; ``final_lr`` after ``total_steps``. Dinomaly's ``WarmCosineScheduler`` warms up along
    ``linspace(start, base, warmup)`` (its last warm-up step is already at ``base_lr``: ``warmup_includes_end``);
    Dinomaly2's ``WarmupCosineScheduler`` along ``start + (base - start) * step / warmup`` (``base_lr`` first at
    step ``warmup``).
    """
    if step >= total_steps:
        return final_lr
    if step < warmup_steps:
        if not warmup_includes_end:
            return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
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
        final_lr_ratio: final lr as a fraction of the initial lr (0.1; 1.0 = constant after the warm-up, Dinomaly2).
        warmup_start_lr: lr at step 0 (0).
        last_epoch: index of the last step, for resuming (-1 for a fresh start).
        warmup_includes_end: Dinomaly's warm-up (True) or Dinomaly2's (False); see :func:`warmup_cosine_lr`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = DEFAULT_WARMUP_STEPS,
        final_lr_ratio: float = DEFAULT_FINAL_LR_RATIO,
        warmup_start_lr: float = 0.0,
        last_epoch: int = -1,
        warmup_includes_end: bool = True,
    ) -> None:
        if total_steps <= 0 or warmup_steps < 0:
            msg = f"total_steps must be positive and warmup_steps non-negative, got {total_steps}, {warmup_steps}."
            raise ValueError(msg)
        self.total_steps = total_steps
        self.warmup_steps = min(warmup_steps, total_steps)
        self.final_lr_ratio = final_lr_ratio
        self.warmup_start_lr = warmup_start_lr
        self.warmup_includes_end = warmup_includes_end
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
                self.warmup_includes_end,
            )
            for base_lr in self.base_lrs
        ]


def trainable_parameter_groups(
    bottleneck: torch.nn.Module,
    decoder: torch.nn.Module,
    lr: float,
    first_layer_lr_ratio: float = 1.0,
) -> list[dict]:
    """Optimiser parameter groups of the bottleneck and decoder, in the official order.

    With ``first_layer_lr_ratio`` 1 one group (Dinomaly). Otherwise Dinomaly2's three: the bottleneck's first
    layer (``bottleneck.first_layer``) at ``lr * first_layer_lr_ratio``, the rest of the bottleneck, the decoder.

    Args:
        bottleneck: a bottleneck with a ``first_layer`` (see :mod:`anomalib_dinomaly.layers`).
        decoder: the decoder blocks.
        lr: base learning rate.
        first_layer_lr_ratio: learning rate of the bottleneck's first layer relative to ``lr`` (Dinomaly2: 0.1).

    Returns:
        Parameter groups for :class:`StableAdamW`, each with its ``lr``.
    """
    if first_layer_lr_ratio == 1.0:
        return [{"params": [*bottleneck.parameters(), *decoder.parameters()], "lr": lr}]
    first = list(bottleneck.first_layer.parameters())
    first_ids = {id(param) for param in first}
    return [
        {"params": first, "lr": lr * first_layer_lr_ratio},
        {"params": [param for param in bottleneck.parameters() if id(param) not in first_ids], "lr": lr},
        {"params": list(decoder.parameters()), "lr": lr},
    ]

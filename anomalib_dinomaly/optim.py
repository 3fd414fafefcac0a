"""StableAdamW and the warm-up + cosine learning-rate schedule of the official Dinomaly and Dinomaly2 training.

Neither torch nor timm ships StableAdamW (AdamW with per-tensor update clipping by the RMS of
``grad / denom``), so it is written here.
"""

from __future__ import annotations

import math
import logging
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

logger = logging.getLogger(__name__)

#: What :class:`StableAdamW` does with a NaN/Inf gradient (see its docstring).
NONFINITE_GRAD_POLICIES = ("ignore", "skip_step", "preview")


class StableAdamW(Optimizer):
    """AdamW whose step is divided by ``max(1, RMS(grad / denom) / clip_threshold)`` per tensor.

    Per parameter, in order: decoupled weight decay ``p *= 1 - lr * wd``; Adam moments (with AMSGrad's
    running maximum if enabled); ``denom = sqrt(v) / sqrt(1 - b2^t) + eps`` (eps after the bias
    correction); ``rms = ||g / denom|| / sqrt(numel)`` on the current gradient;
    ``p -= lr / (1 - b1^t) / max(1, rms / clip_threshold) * m / denom``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (2e-3).
        betas: Adam betas (0.9, 0.999).
        eps: added to the bias-corrected denominator (1e-10 unified, 1e-8 class-separated).
        weight_decay: decoupled weight decay (1e-4).
        amsgrad: use the running maximum of the second moment (True for Dinomaly, False for Dinomaly2).
        clip_threshold: RMS above which the step is scaled down (1.0).
        nonfinite_grads: what a NaN/Inf gradient does. ``"ignore"`` (Dinomaly's official optimiser): no check,
            the values enter the moments. ``"skip_step"``: the whole step is skipped, no parameter or state
            changes, and a warning is logged. ``"preview"``: the Dinomaly2 preview code's partial skip, for
            parity: parameters before the first non-finite gradient (group, then parameter order) are updated,
            that one and all later ones are not, so their step counts fall behind.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-10,
        weight_decay: float = 1e-4,
        amsgrad: bool = True,
        clip_threshold: float = 1.0,
        nonfinite_grads: str = "ignore",
    ) -> None:
        if nonfinite_grads not in NONFINITE_GRAD_POLICIES:
            msg = f"nonfinite_grads must be one of {NONFINITE_GRAD_POLICIES}, got {nonfinite_grads!r}."
            raise ValueError(msg)
        self.nonfinite_grads = nonfinite_grads
        if lr < 0 or eps < 0 or weight_decay < 0 or clip_threshold <= 0:
            msg = f"Invalid StableAdamW setting: lr={lr}, eps={eps}, weight_decay={weight_decay}, clip={clip_threshold}."
            raise ValueError(msg)
        if not all(0.0 <= beta < 1.0 for beta in betas):
            msg = f"Adam betas must be in [0, 1), got {betas}."
            raise ValueError(msg)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "clip_threshold": clip_threshold,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimisation step over every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.nonfinite_grads == "skip_step" and not self._gradients_finite():
            logger.warning("StableAdamW: NaN/Inf in the gradients; skipping this step (no parameter changes).")
            return loss
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if self.nonfinite_grads == "preview" and not bool(torch.isfinite(grad).all()):
                    logger.warning("StableAdamW: NaN/Inf in a gradient; skipping it and every later parameter.")
                    return loss
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]

                param.mul_(1 - lr * weight_decay)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second_moment = exp_avg_sq
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second_moment = state["max_exp_avg_sq"]

                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                denom = (second_moment.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                # ||.|| / sqrt(n), as the official code computes it: mean-of-squares rounds differently in float32.
                rms = (torch.div(grad, denom).norm(2) / math.sqrt(grad.numel())).item()
                state["last_rms"] = rms
                scale = max(1.0, rms / group["clip_threshold"])
                param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1 / scale)
        return loss

    def _gradients_finite(self) -> bool:
        """Whether every gradient is free of NaN/Inf (one device synchronisation for all of them)."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return True
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def warmup_cosine_lr(
    step: int,
    base_lr: float,
    final_lr: float,
    total_steps: int,
    warmup_steps: int = 100,
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
        warmup_steps: int = 100,
        final_lr_ratio: float = 0.1,
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

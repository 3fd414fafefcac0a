"""Dinomaly2 as an anomalib ``AnomalibModule``: Dinomaly with the Dinomaly2 preview code's defaults.

Dinomaly2 ("One Dinomaly2 Detect Them All", Guo et al., arXiv 2510.17611) keeps Dinomaly's encoder, decoder,
loss, hard mining and evaluation, and changes five pieces (preview script ``dinomaly_2D.py``, commit 1745c61):
context-aware recentering of the encoder groups, a three-layer bottleneck whose first layer learns at a tenth
of the learning rate, linear-attention eps 1e-8, StableAdamW without AMSGrad and a learning rate that stays
constant after its warm-up, for 40,000 steps. Each piece stays an argument, so the paper's ablations are one
flag away; everything else is :class:`~anomalib_dinomaly.Dinomaly`'s, argument for argument.
"""

from __future__ import annotations

from typing import Any

from anomalib.models.components import AnomalibModule

from anomalib_dinomaly.layers import DINOMALY2_ATTENTION_EPS, DINOMALY2_BOTTLENECK_DROPOUT
from anomalib_dinomaly.lightning_model import Dinomaly

DINOMALY2_MAX_STEPS = 40_000  # the preview's --total_iters, used when the trainer sets no length
DINOMALY2_FIRST_LAYER_LR_RATIO = 0.1  # bottleneck[0] at 2e-4 beside 2e-3
DINOMALY2_NONFINITE_GRADS = "skip_step"  # the preview skips only the parameters after a NaN; we skip the step


# AnomalibModule is listed again so that anomalib's `get_model("Dinomaly2")`, which searches the direct
# subclasses of AnomalibModule only, finds it; the method resolution order is Dinomaly's.
class Dinomaly2(Dinomaly, AnomalibModule):
    """Dinomaly2: Dinomaly with context-aware recentering, a compressed noisy bottleneck and its optimiser.

    Arguments not listed are :class:`~anomalib_dinomaly.Dinomaly`'s, with the same defaults (ViT-B/14 with
    registers, 448 -> 392, lr 2e-3, batch-independent hard mining ...).

    Args:
        bottleneck_kind: ``"compressed"``: ``Linear(D, 256) -> Dropout -> Linear(256, 4D) -> GELU -> Dropout ->
            Linear(4D, D) -> Dropout``, no dropout on its input; ``"mlp"`` for Dinomaly's.
        bottleneck_dropout: 0.4.
        context_recentering: each fused encoder group's patch tokens minus its class token, then a LayerNorm
            without affine parameters (eps ``recentering_eps``, 1e-8); the decoder groups are not normalised.
        attention_eps: linear-attention eps (1e-8).
        amsgrad: off.
        first_layer_lr_ratio: the bottleneck's first layer at 0.1 x ``lr`` (2e-4).
        final_lr: ``None``: no cosine decay, the learning rate stays at ``lr`` after the warm-up (the preview's
            ``--lr_decay_ratio 1.0``); give a value to decay to it.
        warmup_includes_end: off: the warm-up is ``lr * step / warmup_steps``, so the first step runs at lr 0.
        nonfinite_grads: ``"skip_step"``: a step with a NaN/Inf gradient changes nothing. The preview updates the
            parameters before the first non-finite gradient and skips the rest (``"preview"`` reproduces that).
        default_max_steps: 40,000 steps when the trainer sets no length.
        kwargs: any other :class:`~anomalib_dinomaly.Dinomaly` argument (``encoder_name``, ``image_size`` ...).
    """

    def __init__(
        self,
        bottleneck_kind: str = "compressed",
        bottleneck_dropout: float = DINOMALY2_BOTTLENECK_DROPOUT,
        context_recentering: bool = True,
        attention_eps: float = DINOMALY2_ATTENTION_EPS,
        amsgrad: bool = False,
        first_layer_lr_ratio: float = DINOMALY2_FIRST_LAYER_LR_RATIO,
        final_lr: float | None = None,
        warmup_includes_end: bool = False,
        nonfinite_grads: str = DINOMALY2_NONFINITE_GRADS,
        default_max_steps: int = DINOMALY2_MAX_STEPS,
        **kwargs: Any,  # noqa: ANN401
    ) -> None:
        super().__init__(
            bottleneck_kind=bottleneck_kind,
            bottleneck_dropout=bottleneck_dropout,
            context_recentering=context_recentering,
            attention_eps=attention_eps,
            amsgrad=amsgrad,
            first_layer_lr_ratio=first_layer_lr_ratio,
            final_lr=final_lr,
            warmup_includes_end=warmup_includes_end,
            nonfinite_grads=nonfinite_grads,
            default_max_steps=default_max_steps,
            **kwargs,
        )

    @property
    def name(self) -> str:
        """Results folder name, apart from Dinomaly's (``DinomalyPlugin``)."""
        return "Dinomaly2Plugin"


def _register_on_import() -> None:
    from anomalib_dinomaly.registry import register_dinomaly2

    register_dinomaly2()


_register_on_import()

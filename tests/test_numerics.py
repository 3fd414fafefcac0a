"""Numerical safety: the linear-attention normaliser under fp16/bf16 autocast, long runs on constant images."""

from __future__ import annotations

import pytest
import torch

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.layers import LinearAttention
from anomalib_dinomaly.loss import GlobalCosineHardMiningLoss, hard_mining_fraction
from anomalib_dinomaly.optim import StableAdamW, WarmupCosineLR
from tests.conftest import TINY_MODEL

HALF_DTYPES = [torch.bfloat16, torch.float16]


def _official_init(attention: LinearAttention) -> LinearAttention:
    torch.nn.init.trunc_normal_(attention.qkv.weight, std=0.01, a=-0.03, b=0.03)
    torch.nn.init.zeros_(attention.qkv.bias)
    return attention


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_normaliser_does_not_overflow_under_autocast(dtype):
    # ViT-B width at 448 px: 32 x 32 patches + 5 prefix tokens. Each normaliser sums 64 x 1029 terms near 1,
    # which is above float16's largest value (65504): computed in float16 it became inf and zeroed the output.
    torch.manual_seed(0)
    attention = _official_init(LinearAttention(768, 12))
    tokens = torch.randn(2, 32 * 32 + 5, 768)
    reference = attention(tokens)
    with torch.autocast("cpu", dtype=dtype):
        output = attention(tokens)
    assert output.dtype == dtype
    assert torch.isfinite(output).all()
    scale = reference.abs().max()
    tolerance = {torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]  # relative to the largest output
    assert (output.float() - reference).abs().max() < tolerance * scale


def test_half_precision_model_weights():
    torch.manual_seed(0)
    attention = _official_init(LinearAttention(768, 12))
    tokens = torch.randn(1, 32 * 32 + 5, 768)
    reference = attention(tokens)
    output = attention.half()(tokens.half())
    assert output.dtype == torch.float16
    assert (output.float() - reference).abs().max() < 2e-3 * reference.abs().max()


def _train_on_constant_images(steps: int, value: float, dtype: torch.dtype | None) -> tuple[list[float], Dinomaly]:
    """The training loop of :class:`Dinomaly` without Lightning: StableAdamW, per-step schedule, mining, clipping."""
    torch.manual_seed(0)
    module = Dinomaly(**TINY_MODEL, warmup_steps=10, hard_mining_ramp_steps=steps // 2)
    model = module.model.train()
    params = [*model.bottleneck.parameters(), *model.decoder.parameters()]
    optimizer = StableAdamW(params, lr=2e-3, weight_decay=1e-4, eps=1e-10)
    scheduler = WarmupCosineLR(optimizer, total_steps=steps, warmup_steps=10)
    loss_fn = GlobalCosineHardMiningLoss(factor=0.1)
    images = module.pre_processor(torch.full((4, 3, 112, 112), value))  # constant after normalisation
    losses = []
    for step in range(steps):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            encoder_groups, decoder_groups = model(images)
            loss = loss_fn(encoder_groups, decoder_groups, p=hard_mining_fraction(step, 0.9, steps // 2))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses, module


@pytest.mark.slow
@pytest.mark.parametrize(("value", "dtype", "steps"), [(0.0, None, 200), (0.0, torch.bfloat16, 100), (1.0, torch.float16, 100)])
def test_long_run_on_constant_images_stays_finite(value, dtype, steps):
    losses, module = _train_on_constant_images(steps, value, dtype)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0]  # it learns (constant images are easy to reconstruct)
    for name, param in module.model.named_parameters():
        assert torch.isfinite(param).all(), name
    module.eval()
    with torch.no_grad():
        prediction = module(torch.full((2, 3, 112, 112), value))
    assert torch.isfinite(prediction.pred_score).all()
    assert torch.isfinite(prediction.anomaly_map).all()


@pytest.mark.slow
def test_bf16_mixed_training_through_the_engine(mvtec_root, tmp_path):
    # Lightning turns "16-mixed" into "bf16-mixed" on CPU; float16 autocast is covered by the loop above.
    precision = "bf16-mixed"
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything
    from tests.small_data import make_small_bottle

    data = make_small_bottle(mvtec_root, tmp_path / "data")
    seed_everything(0)
    model = Dinomaly(**TINY_MODEL, visualizer=False, warmup_steps=1)
    engine = Engine(accelerator="cpu", max_steps=4, precision=precision, default_root_dir=tmp_path / "runs", enable_progress_bar=False)
    datamodule = MVTecAD(root=data, category="bottle", train_batch_size=4, eval_batch_size=5, num_workers=0)
    engine.fit(model, datamodule=datamodule)
    metrics = engine.test(model, datamodule=datamodule)[0]
    assert engine.trainer.precision == precision
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics
    assert all(torch.isfinite(param).all() for param in model.model.decoder.parameters())

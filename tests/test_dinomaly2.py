"""Dinomaly2 as an anomalib model: its parts and defaults, each piece as an option, registration and Engine.

(`anomalib train --model Dinomaly2` on two products runs in tests/test_few_shot.py, with shots.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalib_dinomaly import Dinomaly, Dinomaly2
from anomalib_dinomaly.layers import CompressedNoisyBottleneck, ContextAwareRecentering, NoisyBottleneck, PatchTokens
from anomalib_dinomaly.optim import StableAdamW, WarmupCosineLR, trainable_parameter_groups
from tests.conftest import TINY_ENCODER, TINY_MODEL

#: A small random DINOv3 (head width 16, a multiple of 4 for 2D RoPE) on 128 -> 112 px (7 x 16 patches).
TINY_DINOV3_MODEL = {**TINY_ENCODER, "encoder_name": "dinov3_vit_small_16", "image_size": 128, "crop_size": 112}


def test_defaults_are_the_preview_scripts():
    model = Dinomaly2(**TINY_MODEL)
    torch_model = model.model
    assert isinstance(torch_model.bottleneck, CompressedNoisyBottleneck)
    assert torch_model.bottleneck.compress.out_features == 256
    assert torch_model.bottleneck.fc1.out_features == 4 * 48
    assert torch_model.bottleneck.drop.p == 0.4
    assert isinstance(torch_model.encoder_group_head, ContextAwareRecentering)
    assert torch_model.encoder_group_head.eps == 1e-8
    assert all(block.attn.eps == 1e-8 for block in torch_model.decoder)
    hparams = model.hparams
    assert (hparams.amsgrad, hparams.first_layer_lr_ratio, hparams.final_lr, hparams.default_max_steps) == (False, 0.1, None, 40_000)
    assert model.name == "Dinomaly2Plugin"
    # Dinomaly is unchanged by the options it gained.
    dinomaly = Dinomaly(**TINY_MODEL).model
    assert isinstance(dinomaly.bottleneck, NoisyBottleneck) and isinstance(dinomaly.encoder_group_head, PatchTokens)
    assert dinomaly.decoder[0].attn.eps == 1e-6 and dinomaly.bottleneck.drop.p == 0.2


def test_every_piece_can_be_switched_back_for_ablations():
    model = Dinomaly2(**TINY_MODEL, context_recentering=False, bottleneck_kind="mlp", attention_eps=1e-6)
    assert isinstance(model.model.encoder_group_head, PatchTokens)
    assert isinstance(model.model.bottleneck, NoisyBottleneck)
    assert model.model.decoder[0].attn.eps == 1e-6
    with pytest.raises(ValueError, match="bottleneck kind"):
        Dinomaly2(**TINY_MODEL, bottleneck_kind="wide")
    with pytest.raises(ValueError, match="nonfinite_grads"):
        StableAdamW([torch.nn.Parameter(torch.zeros(1))], nonfinite_grads="sometimes")


def test_recentering_normalises_the_encoder_side_only():
    torch.manual_seed(0)
    model = Dinomaly2(**TINY_MODEL).model.eval()
    images = torch.randn(2, 3, 98, 98)
    with torch.no_grad():
        encoder_groups, decoder_groups = model.encode_decode(images)
    for en, de in zip(encoder_groups, decoder_groups, strict=True):
        torch.testing.assert_close(en.mean(dim=1), torch.zeros_like(en[:, 0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(en.var(dim=1, unbiased=False), torch.ones_like(en[:, 0]), atol=1e-3, rtol=0)
        assert de.abs().mean() < 0.5  # raw decoder features (the bottleneck output is small), not normalised


def test_three_parameter_groups_and_the_schedule():
    model = Dinomaly2(**TINY_MODEL)
    hparams = model.hparams
    groups = trainable_parameter_groups(model.model.bottleneck, model.model.decoder, hparams.lr, hparams.first_layer_lr_ratio)
    assert [group["lr"] for group in groups] == pytest.approx([2e-4, 2e-3, 2e-3])
    assert groups[0]["params"] == list(model.model.bottleneck.compress.parameters())
    trainable = [*model.model.bottleneck.parameters(), *model.model.decoder.parameters()]
    assert [id(p) for group in groups for p in group["params"]] == [id(p) for p in trainable]
    optimizer = StableAdamW(groups, amsgrad=hparams.amsgrad)
    scheduler = WarmupCosineLR(optimizer, total_steps=300, warmup_steps=100, final_lr_ratio=1.0, warmup_includes_end=False)
    seen = []
    for _ in range(300):
        seen.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == 0.0 and seen[1] == pytest.approx(2e-5) and seen[99] == pytest.approx(1.98e-3)
    assert seen[100:] == pytest.approx([2e-3] * 200)  # final ratio 1.0: constant after the warm-up


def test_dinov3_names_take_the_patch16_geometry():
    model = Dinomaly2(encoder_name="dinov3_vit_small_16", **TINY_ENCODER)
    assert (model.hparams.image_size, model.hparams.crop_size) == (512, 448)
    assert model.model.encoder.patch_size == 16
    explicit = Dinomaly(**TINY_DINOV3_MODEL)
    assert (explicit.hparams.image_size, explicit.hparams.crop_size) == (128, 112)
    with pytest.raises(ValueError, match="patch size 16"):
        Dinomaly2(encoder_name="dinov3_vit_small_16", **TINY_ENCODER, image_size=448, crop_size=420)
    # Each size falls back to the encoder's default on its own: a given 448 stays 448, even the ViT/14 default.
    resized = Dinomaly2(encoder_name="dinov3_vit_small_16", **TINY_ENCODER, image_size=448)
    assert (resized.hparams.image_size, resized.hparams.crop_size) == (448, 448)
    cropped = Dinomaly(encoder_name="dinov3_vit_small_16", **TINY_ENCODER, crop_size=384)
    assert (cropped.hparams.image_size, cropped.hparams.crop_size) == (512, 384)
    uncropped = Dinomaly2(encoder_name="dinov3_vit_small_16", **TINY_ENCODER, image_size=448, crop_size=None)
    assert (uncropped.hparams.image_size, uncropped.hparams.crop_size) == (448, None)
    with pytest.raises(ValueError, match="patch size 16"):
        Dinomaly(encoder_name="dinov3_vit_small_16", **TINY_ENCODER, image_size=448, crop_size=392)
    assert (Dinomaly(**TINY_ENCODER).hparams.image_size, Dinomaly(**TINY_ENCODER).hparams.crop_size) == (448, 392)
    # The preview's train-mode RoPE rescale of the DINOv3 teacher is on by default in Dinomaly2, off in Dinomaly.
    assert Dinomaly2(**TINY_DINOV3_MODEL).model.encoder.rope_rescale_coords == 2.0
    assert explicit.model.encoder.rope_rescale_coords is None
    assert Dinomaly2(**TINY_DINOV3_MODEL, encoder_rope_rescale=None).model.encoder.rope_rescale_coords is None
    model = Dinomaly2(**TINY_DINOV3_MODEL).model
    images = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        model.train()
        first, second = model.encoder(images, [2])[0], model.encoder(images, [2])[0]
        model.eval()
        assert torch.equal(model.encoder(images, [2])[0], model.encoder(images, [2])[0])
    assert not torch.equal(first, second)  # one draw per forward while training


def test_get_model_and_anomalib_models_resolve_dinomaly2():
    import anomalib.models
    from anomalib.models import get_model

    assert anomalib.models.Dinomaly2 is Dinomaly2
    assert type(get_model("Dinomaly2", **TINY_MODEL)) is Dinomaly2
    assert type(get_model({"class_path": "Dinomaly2", "init_args": TINY_MODEL})) is Dinomaly2


@pytest.mark.slow
def test_engine_fit_with_a_dinov3_encoder(tmp_path, mvtec_root, magnetic_tile_root):
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_dinomaly.data import MultiClass, ProductFolder

    torch.manual_seed(0)
    model = Dinomaly2(**TINY_DINOV3_MODEL)
    loader = {"eval_batch_size": 8, "num_workers": 0}
    data = MultiClass(
        datamodules=[MVTecAD(root=mvtec_root, category="bottle", **loader), ProductFolder(root=magnetic_tile_root, **loader)],
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )
    before = {k: v.clone() for k, v in model.model.decoder.state_dict().items()}
    engine = Engine(default_root_dir=tmp_path, max_steps=3, val_check_interval=3, check_val_every_n_epoch=None, logger=False)
    engine.fit(model=model, datamodule=data)
    optimizer = engine.trainer.optimizers[0]
    # The warm-up shrinks to a 3-step run (0, 1/3, 2/3 of lr); after it, final ratio 1.0 keeps each group's lr.
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([2e-4, 2e-3, 2e-3])
    assert not optimizer.param_groups[0]["amsgrad"]
    after = model.model.decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # steps 1 and 2 ran at lr > 0
    results = engine.test(model=model, datamodule=data)[0]
    assert 0.0 <= results["image_AUROC"] <= 1.0
    assert "Dinomaly2Plugin" in str(engine.trainer.default_root_dir)
    checkpoint = next(Path(engine.trainer.default_root_dir).rglob("*.ckpt"))
    reloaded = Dinomaly2.load_from_checkpoint(checkpoint).eval()
    assert reloaded.hparams.encoder_name == "dinov3_vit_small_16" and not reloaded.hparams.pretrained
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(images).pred_score, model.eval().model(images).pred_score, atol=0, rtol=0)



@pytest.mark.slow  # a fresh interpreter importing anomalib
def test_importing_dinomaly2_first_registers_it_without_a_circular_import():
    code = (
        "import anomalib_dinomaly.dinomaly2 as d2, anomalib.models as m; "
        "print(m.Dinomaly2 is d2.Dinomaly2, m.Dinomaly.__module__)"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "anomalib_dinomaly.lightning_model"]

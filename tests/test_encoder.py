"""DINOv2 encoder: variants, DINOv2 position-embedding interpolation, weight files and their errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from anomalib_dinomaly.encoder import (
    ENCODER_VARIANTS,
    DinoV2Encoder,
    PretrainedWeightsError,
    interpolate_pos_embed,
    resolve_variant,
)

GOLDEN_ENCODER = {"embed_dim": 96, "depth": 10, "num_heads": 3, "num_register_tokens": 4}


def test_variants_and_names():
    assert resolve_variant("dinov2reg_vit_base_14") is resolve_variant("vit_base_patch14_reg4_dinov2")
    assert resolve_variant("dinov2reg_vit_large_14").target_layers == (4, 6, 8, 10, 12, 14, 16, 18)
    assert resolve_variant("dinov2_vit_small_14").num_register_tokens == 0
    assert len(ENCODER_VARIANTS) == 6
    with pytest.raises(ValueError, match="Unknown encoder name 'vit_huge'.*dinov2reg_vit_base_14"):
        resolve_variant("vit_huge")


@pytest.mark.parametrize(("name", "prefix"), [("dinov2reg_vit_small_14", 5), ("dinov2_vit_small_14", 1)])
def test_token_layout(name, prefix):
    encoder = DinoV2Encoder(name, embed_dim=24, depth=3, num_heads=2)
    assert encoder.num_prefix_tokens == prefix
    tokens = encoder.prepare_tokens(torch.randn(2, 3, 42, 56))  # non-square: 3 x 4 patches
    assert tokens.shape == (2, prefix + 12, 24)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_pos_embed_interpolation_is_dinov2s():
    torch.manual_seed(0)
    grid = torch.randn(1, 37 * 37, 8)
    same = interpolate_pos_embed(grid, (37, 37), (37, 37))
    assert same is grid
    out = interpolate_pos_embed(grid, (37, 37), (28, 32))
    assert out.shape == (1, 28 * 32, 8)
    # offset 0.1 through scale_factor, bicubic, no antialias; height scaled by height
    image = grid.reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    reference = torch.nn.functional.interpolate(
        image, scale_factor=(28.1 / 37, 32.1 / 37), mode="bicubic", antialias=False
    ).permute(0, 2, 3, 1).reshape(1, -1, 8)
    torch.testing.assert_close(out, reference)
    by_size = torch.nn.functional.interpolate(image, size=(28, 32), mode="bicubic").permute(0, 2, 3, 1).reshape(1, -1, 8)
    assert (out - by_size).abs().max() > 1e-3


def test_input_size_must_be_multiple_of_patch():
    encoder = DinoV2Encoder("dinov2reg_vit_small_14", embed_dim=24, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="100x98 is not a multiple of the patch size 14"):
        encoder(torch.randn(1, 3, 100, 98), [1])


def _meta_state_dict(golden_dir):
    state = load_file(str(golden_dir / "state_dict.safetensors"))
    return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}


def test_meta_pth_weights_reproduce_official_features(tmp_path, golden_dir):
    """Meta's DINOv2 layout (cls + pos slot, register_tokens, mask_token) loads and gives the official features."""
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(_meta_state_dict(golden_dir), path)
    encoder = DinoV2Encoder("dinov2reg_vit_base_14", weights=path, **GOLDEN_ENCODER)
    forward = load_file(str(golden_dir / "forward.safetensors"))
    with torch.no_grad():
        layers = encoder(forward["images"], [2, 9])
    torch.testing.assert_close(layers[0], forward["encoder_layer_02"], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(layers[1], forward["encoder_layer_09"], atol=2e-6, rtol=1e-5)


def test_timm_safetensors_weights_round_trip(tmp_path, golden_dir):
    reference = DinoV2Encoder("dinov2reg_vit_base_14", **GOLDEN_ENCODER)
    reference.load_pretrained(_meta_state_dict(golden_dir), source="golden")
    path = tmp_path / "model.safetensors"
    save_file(reference.vit.state_dict(), str(path))  # timm/Hugging Face layout
    loaded = DinoV2Encoder("dinov2reg_vit_base_14", weights=path, **GOLDEN_ENCODER)
    images = torch.randn(1, 3, 56, 70)
    torch.testing.assert_close(loaded(images, [0, 5])[1], reference(images, [0, 5])[1], atol=0, rtol=0)


def test_weight_errors_name_the_file_and_the_fix(tmp_path, golden_dir):
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        DinoV2Encoder("dinov2reg_vit_base_14", weights=tmp_path / "missing.pth", **GOLDEN_ENCODER)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="broken.pth"):
        DinoV2Encoder("dinov2reg_vit_base_14", weights=broken, **GOLDEN_ENCODER)
    path = tmp_path / "dinov2.pth"
    torch.save(_meta_state_dict(golden_dir), path)
    with pytest.raises(PretrainedWeightsError, match="do not fit encoder.*registers=0"):
        DinoV2Encoder("dinov2_vit_base_14", weights=path, embed_dim=96, depth=10, num_heads=3)


def test_offline_pretrained_error_says_how_to_get_weights():
    code = (
        "from anomalib_dinomaly.encoder import DinoV2Encoder\n"
        "DinoV2Encoder('dinov2reg_vit_small_14', pretrained=True)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "PretrainedWeightsError" in result.stderr
    assert "https://huggingface.co/timm/vit_small_patch14_reg4_dinov2.lvd142m" in result.stderr
    assert "dinov2_vits14_reg4_pretrain.pth" in result.stderr
    assert "encoder_weights=/path/to/file" in result.stderr

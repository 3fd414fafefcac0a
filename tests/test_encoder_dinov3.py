"""DINOv3 encoder: golden parity, Meta and timm weight files, stored RoPE periods, masked k bias, errors, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from anomalib_dinomaly.encoder import DinoV2Encoder, PretrainedWeightsError, build_encoder, resolve_variant
from anomalib_dinomaly.encoder_dinov3 import DINOV3_VARIANTS, DinoV3Encoder, resolve_dinov3_variant

from tests.conftest import SHARED

GOLDEN_DINOV3 = SHARED / "golden" / "dinomaly2_dinov3"
#: A small random DINOv3: head width 16 (RoPE needs a multiple of 4), 4 storage tokens.
SMALL = {"embed_dim": 32, "depth": 3, "num_heads": 2}


@pytest.fixture(scope="module")
def golden():
    folder = GOLDEN_DINOV3
    if not folder.exists():
        pytest.skip(f"{folder} is not available (set DINOMALY_SHARED to the shared folder)")
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "state_dict.safetensors"))
    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return config, encoder_state, load_file(str(folder / "forward.safetensors"))


def _golden_encoder(config, **kwargs) -> DinoV3Encoder:
    storage = config.get("n_storage_tokens", config["num_register_tokens"])
    return DinoV3Encoder(
        "dinov3_vit_base_16",
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        num_register_tokens=storage,
        **kwargs,
    )


def _golden_images(config, forward) -> torch.Tensor:
    mean = torch.tensor(config["normalize_mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config["normalize_std"], dtype=torch.float32).view(1, 3, 1, 1)
    return ((forward["images_uint8"].float() / 255) - mean) / std


def test_golden_target_layers_and_rope_match_the_preview(golden):
    config, encoder_state, forward = golden
    encoder = _golden_encoder(config).eval()
    encoder.load_pretrained(encoder_state, source="golden")
    assert encoder.patch_size == config["patch_size"]
    torch.testing.assert_close(encoder.vit.rope.periods, encoder_state["rope_embed.periods"], atol=0, rtol=0)
    images = _golden_images(config, forward)[:1]
    grid = encoder.patch_grid(images)
    with torch.no_grad():
        layers = encoder(images, config["target_layers"])
    for layer, output in zip(config["target_layers"], layers, strict=True):
        expected = forward[f"encoder_layer_{layer:02d}_image0"]
        assert output.shape == expected.shape == (1, encoder.num_prefix_tokens + grid[0] * grid[1], encoder.embed_dim)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    if "rope_sin" in forward:
        sin, cos = encoder.rope_table(grid).chunk(2, dim=-1)
        torch.testing.assert_close(sin, forward["rope_sin"], atol=1e-6, rtol=0)
        torch.testing.assert_close(cos, forward["rope_cos"], atol=1e-6, rtol=0)


def _random_timm_state(num_register_tokens: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm-format DINOv3 state dict (what timm saves: no periods), every parameter random."""
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_small_patch16_dinov3_qkvb", num_classes=0, num_reg_tokens=num_register_tokens, **SMALL
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _to_meta_format(timm_state: dict[str, torch.Tensor], periods: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same weights under Meta's names, with a large k bias that the mask must cancel."""
    generator = torch.Generator().manual_seed(1)
    mask_token = torch.randn(1, SMALL["embed_dim"], generator=generator)
    meta = {"rope_embed.periods": periods.clone(), "mask_token": mask_token}
    for key, value in timm_state.items():
        if key.endswith("attn.q_bias"):
            v_bias = timm_state[key.replace("q_bias", "v_bias")]
            k_bias = torch.randn(value.shape, generator=generator)
            meta[key.replace("q_bias", "qkv.bias")] = torch.cat([value, k_bias, v_bias])
            meta[key.replace("q_bias", "qkv.bias_mask")] = torch.cat(
                [torch.ones_like(value), torch.zeros_like(value), torch.ones_like(value)]
            )
        elif not key.endswith("attn.v_bias"):
            key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
            meta["storage_tokens" if key == "reg_token" else key] = value
    return meta


def _formula_periods() -> torch.Tensor:
    head_dim = SMALL["embed_dim"] // SMALL["num_heads"]
    return 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


IMAGES = torch.randn(2, 3, 48, 64)  # non-square: 3 x 4 patches


def _layers(encoder: DinoV3Encoder) -> list[torch.Tensor]:
    with torch.no_grad():
        return encoder.eval()(IMAGES, [0, 2])


def test_meta_and_timm_files_load_and_agree_with_timm(tmp_path):
    timm_state = _random_timm_state()
    timm_file = tmp_path / "model.safetensors"
    save_file(timm_state, str(timm_file))
    meta_file = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(_to_meta_format(timm_state, _formula_periods()), meta_file)

    from_timm = DinoV3Encoder("dinov3_vit_small_16", weights=timm_file, **SMALL)
    from_meta = DinoV3Encoder("vit_small_patch16_dinov3", weights=meta_file, **SMALL)
    for ours, theirs in zip(_layers(from_timm), _layers(from_meta), strict=True):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)

    reference = timm.create_model("vit_small_patch16_dinov3_qkvb", num_classes=0, **SMALL).eval()
    reference.load_state_dict(timm_state)
    with torch.no_grad():
        expected = reference.forward_intermediates(IMAGES, indices=[0, 2], norm=False, output_fmt="NLC",
                                                   intermediates_only=True, return_prefix_tokens=True)
    for ours, (patches, prefix) in zip(_layers(from_timm), expected, strict=True):
        torch.testing.assert_close(ours, torch.cat([prefix, patches], dim=1), atol=1e-6, rtol=1e-6)


def test_weights_without_qkv_bias_load_as_zero_bias(tmp_path):
    """timm's non-``_qkvb`` DINOv3 files hold no qkv bias: they load as zero q/v biases."""
    state = {k: v for k, v in _random_timm_state().items() if not k.endswith(("q_bias", "v_bias"))}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    encoder = DinoV3Encoder("dinov3_vit_small_16", weights=path, **SMALL)
    assert all(block.attn.q_bias.abs().max() == 0 for block in encoder.vit.blocks)


def test_stored_periods_are_used_and_round_trip(tmp_path):
    timm_state = _random_timm_state()
    periods = _formula_periods() * torch.linspace(0.8, 1.25, _formula_periods().numel())
    meta_file = tmp_path / "meta.pth"
    torch.save(_to_meta_format(timm_state, periods), meta_file)
    encoder = DinoV3Encoder("dinov3_vit_small_16", weights=meta_file, **SMALL)
    torch.testing.assert_close(encoder.vit.rope.periods, periods, atol=0, rtol=0)
    formula = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    formula.load_pretrained(timm_state, source="timm")  # timm files hold no periods: the formula's
    torch.testing.assert_close(formula.vit.rope.periods, _formula_periods(), atol=0, rtol=0)
    assert (_layers(encoder)[-1] - _layers(formula)[-1]).abs().max() > 1e-3

    encoder.half()  # timm would recompute the periods from the formula on a downcast
    torch.testing.assert_close(encoder.vit.rope.periods, periods, atol=0, rtol=0)
    encoder.float()
    checkpoint = encoder.state_dict()
    assert "vit.rope.periods" in checkpoint
    reloaded = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    reloaded.load_state_dict(checkpoint, strict=True)
    torch.testing.assert_close(reloaded.vit.rope.periods, periods, atol=0, rtol=0)
    torch.testing.assert_close(_layers(reloaded)[-1], _layers(encoder)[-1], atol=0, rtol=0)


def test_masked_k_bias_has_no_effect_and_a_wrong_mask_is_refused(tmp_path):
    meta = _to_meta_format(_random_timm_state(), _formula_periods())
    first = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    first.load_pretrained(meta, source="meta")
    width = SMALL["embed_dim"]
    for key in [k for k in meta if k.endswith("qkv.bias")]:
        meta[key] = meta[key].clone()
        meta[key][width : 2 * width] += 5.0
    second = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    second.load_pretrained(meta, source="meta")
    torch.testing.assert_close(_layers(first)[-1], _layers(second)[-1], atol=0, rtol=0)

    meta["blocks.0.attn.qkv.bias_mask"] = torch.ones(3 * width)
    with pytest.raises(PretrainedWeightsError, match=r"blocks\.0\.attn\.qkv\.bias_mask is not \[1 \(q\), 0 \(k\), 1"):
        second.load_pretrained(meta, source="meta")


def test_checkpoint_without_storage_tokens_loads(tmp_path):
    timm_state = _random_timm_state(num_register_tokens=0)
    meta = _to_meta_format(timm_state, _formula_periods())
    assert "storage_tokens" not in meta
    path = tmp_path / "meta.pth"
    torch.save(meta, path)
    encoder = DinoV3Encoder("dinov3_vit_small_16", weights=path, num_register_tokens=0, **SMALL)
    assert encoder.num_prefix_tokens == 1
    assert encoder.num_register_tokens == 0
    layers = _layers(encoder)
    assert layers[0].shape == (2, 1 + 3 * 4, SMALL["embed_dim"])
    timm_file = tmp_path / "model.safetensors"
    save_file(timm_state, str(timm_file))
    from_timm = DinoV3Encoder("dinov3_vit_small_16", weights=timm_file, num_register_tokens=0, **SMALL)
    torch.testing.assert_close(_layers(from_timm)[-1], layers[-1], atol=0, rtol=0)


def test_weight_errors_list_the_keys_and_the_fix(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        DinoV3Encoder("dinov3_vit_small_16", weights=tmp_path / "missing.pth", **SMALL)
    path = tmp_path / "meta.pth"
    torch.save(_to_meta_format(_random_timm_state(), _formula_periods()), path)
    layout = r"storage tokens=0\): in timm.s layout, missing keys \[\], unexpected keys \[.reg_token.\]"
    with pytest.raises(PretrainedWeightsError, match=layout):
        DinoV3Encoder("dinov3_vit_small_16", weights=path, num_register_tokens=0, **SMALL)
    with pytest.raises(PretrainedWeightsError, match=r"do not fit encoder.*depth=2.*unexpected keys \['blocks\.2\."):
        DinoV3Encoder("dinov3_vit_small_16", weights=path, embed_dim=32, depth=2, num_heads=2)


def test_offline_pretrained_error_names_both_sources_and_the_licence(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedWeightsError) as error:
        DinoV3Encoder("dinov3_vit_small_16", pretrained=True)
    message = str(error.value)
    assert "https://huggingface.co/timm/vit_small_patch16_dinov3_qkvb.lvd1689m" in message
    assert "dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in message
    assert "gated" in message
    assert "DINOv3 licence" in message
    assert "encoder_weights=/path/to/file" in message
    assert "--model.encoder_weights" in message


def test_sizes_and_bad_shapes():
    encoder = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    assert encoder.patch_grid(torch.zeros(1, 3, 448, 448)) == (28, 28)
    with pytest.raises(ValueError, match="450x448 is not a multiple of the patch size 16"):
        encoder(torch.randn(1, 3, 450, 448), [0])
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        encoder.patch_grid(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="embed_dim 30 must split into num_heads 4"):
        DinoV3Encoder("dinov3_vit_small_16", embed_dim=30, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="multiple of 4"):
        DinoV3Encoder("dinov3_vit_small_16", embed_dim=36, depth=1, num_heads=6)  # head width 6
    with pytest.raises(ValueError, match="rope_rescale_coords must be >= 1"):
        DinoV3Encoder("dinov3_vit_small_16", rope_rescale_coords=0.5, **SMALL)
    encoder.keep_blocks(2)
    assert encoder.depth == 2
    with pytest.raises(ValueError, match="Cannot keep 3 blocks"):
        encoder.keep_blocks(3)


def test_variants_share_the_encoder_interface():
    for variant in DINOV3_VARIANTS.values():
        assert (variant.patch_size, variant.default_image_size, variant.default_crop_size) == (16, 512, 448)
        assert variant.default_crop_size // variant.patch_size == 28
        assert variant.num_register_tokens == 4
    assert resolve_dinov3_variant("dinov3_vit_large_16").target_layers == (4, 6, 8, 10, 12, 14, 16, 18)
    assert resolve_dinov3_variant("vit_base_patch16_dinov3.lvd1689m") is DINOV3_VARIANTS["dinov3_vit_base_16"]
    assert resolve_dinov3_variant("vit_small_patch16_dinov3_qkvb") is DINOV3_VARIANTS["dinov3_vit_small_16"]
    dinov2 = resolve_variant("dinov2reg_vit_base_14")
    assert (dinov2.patch_size, dinov2.default_image_size, dinov2.default_crop_size) == (14, 448, 392)
    encoder = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    assert (encoder.embed_dim, encoder.num_heads, encoder.depth, encoder.num_prefix_tokens) == (32, 2, 3, 5)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_build_encoder_dispatches_on_the_name():
    assert isinstance(build_encoder("dinov3_vit_small_16", pretrained=False, **SMALL), DinoV3Encoder)
    assert isinstance(build_encoder("vit_large_patch16_dinov3", **SMALL), DinoV3Encoder)
    dinov2 = build_encoder("dinov2reg_vit_small_14", pretrained=False, embed_dim=24, depth=2, num_heads=2)
    assert isinstance(dinov2, DinoV2Encoder)
    assert dinov2.patch_size == 14
    both_families = "Unknown encoder name 'dinov3_vit_huge_16'.*dinov2reg_vit_base_14.*dinov3_vit_base_16"
    with pytest.raises(ValueError, match=both_families):
        build_encoder("dinov3_vit_huge_16")


def test_rope_rescale_is_train_mode_only_and_drawn_per_block():
    state = _random_timm_state()
    plain = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    plain.load_pretrained(state, source="timm")
    rescaled = DinoV3Encoder("dinov3_vit_small_16", rope_rescale_coords=2.0, **SMALL)
    rescaled.load_pretrained(state, source="timm")
    reference = _layers(plain)[-1]
    torch.testing.assert_close(_layers(rescaled)[-1], reference, atol=0, rtol=0)  # eval: no augmentation
    with torch.no_grad():
        plain.train()
        torch.testing.assert_close(plain(IMAGES, [2])[0], reference, atol=0, rtol=0)  # option off: deterministic
        rescaled.train()
        torch.manual_seed(3)
        first = rescaled(IMAGES, [2])[0]
        second = rescaled(IMAGES, [2])[0]
        torch.manual_seed(3)
        repeated = rescaled(IMAGES, [2])[0]
        torch.manual_seed(3)
        rescaled(IMAGES, [2])
        after_forward = torch.rand(4)
        torch.manual_seed(3)
        for _ in range(3):  # one scale per block, as Meta's block loop draws them
            torch.empty(1).uniform_(-np.log(2.0), np.log(2.0))
        after_three_draws = torch.rand(4)
    assert (first - reference).abs().max() > 1e-4
    assert (first - second).abs().max() > 1e-4
    torch.testing.assert_close(repeated, first, atol=0, rtol=0)
    torch.testing.assert_close(after_forward, after_three_draws, atol=0, rtol=0)


def test_dinomaly_network_runs_on_the_dinov3_encoder():
    """The model code needs only the shared encoder interface: a 16-px-patch encoder drops in."""
    from anomalib_dinomaly.torch_model import DinomalyModel

    encoder = DinoV3Encoder("dinov3_vit_small_16", embed_dim=32, depth=12, num_heads=2)
    model = DinomalyModel(encoder, decoder_depth=2, fuse_layer_decoder=[[0], [1]])
    assert encoder.depth == 10  # blocks after the last default target layer (9) are dropped
    images = torch.randn(2, 3, 64, 80)
    encoder_groups, decoder_groups = model.train()(images)
    assert [g.shape for g in encoder_groups] == [(2, 32, 4, 5)] * 2 == [g.shape for g in decoder_groups]
    with torch.no_grad():
        result = model.eval()(images)
    assert result.anomaly_map.shape == (2, 1, 64, 80)
    assert torch.isfinite(result.pred_score).all()


class _StackedLayers(torch.nn.Module):
    """The encoder as a single-output graph: (B, layers, tokens, D)."""

    def __init__(self, encoder: DinoV3Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.encoder(images, [0, 2]), dim=1)


@pytest.mark.slow
def test_rope_exports_to_onnx_and_openvino_with_dynamic_sizes(tmp_path):
    """The project's export path (dynamo, opset 18, dynamic batch/height/width) keeps RoPE exact in OpenVINO FP32."""
    openvino = pytest.importorskip("openvino")
    encoder = DinoV3Encoder("dinov3_vit_small_16", **SMALL)
    periods = _formula_periods() * torch.linspace(0.8, 1.25, _formula_periods().numel())
    encoder.load_pretrained(_to_meta_format(_random_timm_state(), periods), source="meta")
    model = _StackedLayers(encoder).eval()
    path = tmp_path / "encoder.onnx"
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    torch.onnx.export(model, (IMAGES,), str(path), opset_version=18, dynamo=True, dynamic_shapes=(dims,))
    compiled = openvino.Core().compile_model(
        openvino.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    for images in (IMAGES, torch.randn(1, 3, 32, 80)):  # the traced grid and another one (2 x 5 patches)
        with torch.no_grad():
            expected = model(images).numpy()
        exported = compiled(images.numpy())[0]
        assert exported.shape == expected.shape
        np.testing.assert_allclose(exported, expected, atol=1e-4, rtol=0)


def test_rope_table_equals_timms_dinov3_rope_in_both_modes():
    """Our table (export-friendly grid) computes what timm's port of Meta's RoPE computes, augmentation included."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3

    encoder = DinoV3Encoder("dinov3_vit_small_16", rope_rescale_coords=2.0, **SMALL)
    head_dim = SMALL["embed_dim"] // SMALL["num_heads"]
    reference = RotaryEmbeddingDinoV3(head_dim, temperature=100, rescale_coords=2.0)
    expected = reference.eval().get_embed(shape=[5, 7])
    torch.testing.assert_close(encoder.eval().rope_table((5, 7)), expected, atol=0, rtol=0)
    encoder.train()
    reference.train()
    for seed in range(3):
        torch.manual_seed(seed)
        ours = encoder.rope_table((5, 7))
        torch.manual_seed(seed)
        torch.testing.assert_close(ours, reference.get_embed(shape=[5, 7]), atol=0, rtol=0)

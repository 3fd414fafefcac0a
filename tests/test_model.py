"""DinomalyModel wiring, validation and the official-config variants."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import InferenceBatch
from safetensors.torch import load_file

from anomalib_dinomaly import Dinomaly
from anomalib_dinomaly.anomaly_map import AnomalyMapGenerator
from anomalib_dinomaly.encoder import DinoV2Encoder
from anomalib_dinomaly.official import build_official_model, convert_official_state_dict, from_official_checkpoint
from anomalib_dinomaly.torch_model import DinomalyModel


def tiny_model(**kwargs) -> DinomalyModel:
    encoder = DinoV2Encoder("dinov2reg_vit_small_14", embed_dim=24, depth=10, num_heads=2)
    return DinomalyModel(encoder, **kwargs)


def test_encoder_is_cut_after_last_target_layer():
    model = tiny_model(target_layers=[1, 2, 3, 4, 5, 6, 7, 8])
    assert model.encoder.depth == 9
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in [*model.bottleneck.parameters(), *model.decoder.parameters()])


def test_trainable_init_is_official():
    model = tiny_model()
    weights = torch.cat([m.weight.flatten() for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)])
    assert weights.abs().max() <= 0.03
    assert 0.007 < weights.std() < 0.011
    assert all(m.bias.abs().max() == 0 for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))


def test_train_and_eval_outputs():
    model = tiny_model()
    images = torch.randn(2, 3, 56, 84)
    en, de = model.train()(images)
    assert [t.shape for t in en] == [(2, 24, 4, 6)] * 2 == [t.shape for t in de]
    assert de[0].requires_grad and not en[0].requires_grad
    out = model.eval()(images)
    assert isinstance(out, InferenceBatch)
    assert out.pred_score.shape == (2,) and out.anomaly_map.shape == (2, 1, 56, 84)


@pytest.mark.parametrize("channels", [1, 4])
def test_greyscale_and_rgba_inputs(channels):
    model = tiny_model().eval()
    rgb = torch.rand(1, 3, 28, 28)
    other = rgb[:, :1] if channels == 1 else torch.cat([rgb, torch.ones(1, 1, 28, 28)], dim=1)
    expected = model(rgb[:, :1].expand(-1, 3, -1, -1) if channels == 1 else rgb).pred_score
    torch.testing.assert_close(model(other).pred_score, expected)


def test_bad_inputs_and_settings_fail_clearly():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="got 2"):
        model(torch.rand(1, 2, 28, 28))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.rand(1, 3, 30, 28))
    with pytest.raises(ValueError, match="only indices 0..7"):
        tiny_model(fuse_layer_encoder=[[0, 1], [2, 8]])
    with pytest.raises(ValueError, match="2 groups but fuse_layer_decoder has 1"):
        tiny_model(fuse_layer_decoder=[[0, 1, 2]])
    with pytest.raises(ValueError, match="exceed the encoder's 10 blocks"):
        tiny_model(target_layers=[2, 12])
    with pytest.raises(ValueError, match="ascending"):
        tiny_model(target_layers=[5, 3])
    with pytest.raises(ValueError, match="crop_size"):
        Dinomaly(pretrained=False, image_size=448, crop_size=400)
    with pytest.raises(ValueError, match="larger than image_size"):
        Dinomaly(pretrained=False, image_size=392, crop_size=448)
    with pytest.raises(ValueError, match="Unknown encoder"):
        Dinomaly(encoder_name="resnet18", pretrained=False)
    with pytest.raises(ValueError, match="top_ratio"):
        AnomalyMapGenerator(top_ratio=2.0)


def test_score_is_mean_of_top_one_percent():
    generator = AnomalyMapGenerator(eval_size=None)
    eval_map = torch.arange(10_000, dtype=torch.float32).reshape(1, 1, 100, 100)
    assert generator.score(eval_map).item() == pytest.approx(sum(range(9_900, 10_000)) / 100)


@pytest.mark.parametrize(
    ("config", "size"),
    [
        ({"embed_dim": 48, "depth": 10, "num_heads": 3, "num_register_tokens": 0}, (392, 392)),
        (
            {
                "embed_dim": 48,
                "depth": 12,
                "num_heads": 3,
                "target_layers": [1, 3, 5, 7, 9, 11],
                "fuse_layer_encoder": [[0, 1, 2], [3, 4, 5]],
                "fuse_layer_decoder": [[0, 1], [2, 3]],
                "decoder_depth": 4,
            },
            (448, 448),
        ),
        ({"embed_dim": 48, "depth": 10, "num_heads": 3, "fuse_layer_encoder": [[0, 1, 2, 3, 4, 5, 6, 7]],
          "fuse_layer_decoder": [[0, 1, 2, 3, 4, 5, 6, 7]]}, (448, 448)),
    ],
)
def test_official_configs_other_than_golden(config, size):
    """No registers, other groupings, 448 x 448 uncropped: built, converted back and forth, run."""
    reference = build_official_model(config)
    official = _to_official(reference.state_dict(), reference)
    model = from_official_checkpoint(official, config)
    images = torch.randn(1, 3, *size)
    en, de = model.encode_decode(images)
    groups = len(config.get("fuse_layer_encoder", [[0], [1]]))
    assert len(en) == len(de) == groups
    assert en[0].shape == (1, 48, size[0] // 14, size[1] // 14)
    out = model(images)
    assert out.anomaly_map.shape == (1, 1, *size) and torch.isfinite(out.pred_score).all()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_decode(images)[1][0], reference.eval().encode_decode(images)[1][0])


def test_unknown_or_missing_official_keys_are_errors(golden_dir):
    state = load_file(str(golden_dir / "state_dict.safetensors"))
    with pytest.raises(KeyError, match="Unknown keys.*head.weight"):
        convert_official_state_dict({**state, "head.weight": torch.zeros(1)}, 4, 9)
    del state["encoder.register_tokens"]
    with pytest.raises(KeyError, match="register"):
        convert_official_state_dict(state, 4, 9)
    missing = {k: v for k, v in load_file(str(golden_dir / "state_dict.safetensors")).items() if k != "decoder.0.norm1.weight"}
    with pytest.raises(RuntimeError, match="decoder.0.norm1.weight"):
        from_official_checkpoint(missing, _golden_config(golden_dir))


def test_lightning_constructor_with_converted_weights_matches_official_import(golden_dir):
    import json

    config = _golden_config(golden_dir)
    state = load_file(str(golden_dir / "state_dict.safetensors"))
    official = from_official_checkpoint(state, config)
    module = Dinomaly(pretrained=False, embed_dim=96, depth=10, num_heads=3, num_register_tokens=4)
    module.model.load_state_dict(convert_official_state_dict(state, 4, 9), strict=True)
    module.eval()
    images = load_file(str(golden_dir / "forward.safetensors"))["images"]
    with torch.no_grad():
        torch.testing.assert_close(module.model(images).anomaly_map, official(images).anomaly_map, atol=0, rtol=0)
    assert json.loads((golden_dir / "config.json").read_text())["decoder_depth"] == len(module.model.decoder)


def _golden_config(golden_dir):
    import json

    return json.loads((golden_dir / "config.json").read_text())


def _to_official(state_dict, model):
    """Inverse key mapping (for tests): our keys -> official ViTill keys."""
    official = {}
    registers = model.encoder.num_register_tokens
    for key, value in state_dict.items():
        if key.startswith("encoder.vit."):
            name = key.removeprefix("encoder.vit.")
            if name == "reg_token":
                name = "register_tokens"
            official[f"encoder.{name}"] = value
        elif key.startswith("bottleneck."):
            official[f"bottleneck.0.{key.removeprefix('bottleneck.')}"] = value
        else:
            official[key] = value
    if registers:
        pos = official["encoder.pos_embed"]
        cls_pos = torch.zeros_like(pos[:, :1])
        official["encoder.pos_embed"] = torch.cat([cls_pos, pos], dim=1)
    official["encoder.mask_token"] = torch.zeros(1, state_dict["encoder.vit.cls_token"].shape[-1])
    return official

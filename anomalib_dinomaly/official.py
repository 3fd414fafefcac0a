"""Official Dinomaly checkpoints (``guojiajeremy/Dinomaly``, ``ViTill.state_dict()``) and Dinomaly2 preview
checkpoints (``models.uad.Dinomaly.state_dict()``) to this package's model.

The configuration says which model and which encoder family a checkpoint belongs to, part by part: the
bottleneck from ``bottleneck_hidden_dims`` (Dinomaly2's three layers) or its absence (Dinomaly's MLP), the
encoder-group head from ``context_aware_recenter``, the decoder's attention eps from ``linear_attention_eps``,
and DINOv3 from its RoPE / storage-token keys or ``encoder_family``. The key conversion is a pure function;
every official key is either mapped or dropped for a stated reason, and anything else is an error (no silent
``strict=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anomalib_dinomaly.encoder import PATCH_SIZE, PRETRAINING_GRID, DinoV2Encoder, load_weights_file
from anomalib_dinomaly.layers import ATTENTION_EPS, DECODER_NORM_EPS, RECENTERING_EPS, ContextAwareRecentering
from anomalib_dinomaly.torch_model import DinomalyModel, build_bottleneck, build_decoder

if TYPE_CHECKING:
    from anomalib_dinomaly.lightning_model import Dinomaly

OFFICIAL_CONFIG_KEYS = (
    "embed_dim",
    "depth",
    "num_heads",
    "num_register_tokens",
    "patch_size",
    "pos_grid",
    "interpolate_offset",
    "target_layers",
    "fuse_layer_encoder",
    "fuse_layer_decoder",
    "decoder_depth",
    "bottleneck_dropout",
)

#: The official ``dinomaly_mvtec_uni.py`` setting: ViT-B/14 with 4 registers.
OFFICIAL_DEFAULT_CONFIG: dict[str, Any] = {
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "num_register_tokens": 4,
    "patch_size": 14,
    "pos_grid": 37,
    "interpolate_offset": 0.1,
    "target_layers": [2, 3, 4, 5, 6, 7, 8, 9],
    "fuse_layer_encoder": [[0, 1, 2, 3], [4, 5, 6, 7]],
    "fuse_layer_decoder": [[0, 1, 2, 3], [4, 5, 6, 7]],
    "decoder_depth": 8,
    "bottleneck_dropout": 0.2,
}

#: Keys of a Dinomaly2 preview configuration (``dinomaly_2D.py``) beyond :data:`OFFICIAL_CONFIG_KEYS`.
DINOMALY2_CONFIG_KEYS = (
    "bottleneck_hidden_dims",
    "context_aware_recenter",
    "car_layer_norm_eps",
    "car_layer_norm_affine",
    "linear_attention_eps",
    "decoder_layernorm_eps",
    "decoder_num_heads",
    "mlp_ratio",
    "fuse_layer_bottleneck",
    "remove_class_token",
    "mask_neighbor_size",
    "encoder_family",
    "n_storage_tokens",
    "rope_base",
    "rope_normalize_coords",
    "rope_periods_loaded",
    "encoder_layernorm_eps",
)
#: Keys that only a DINOv3 encoder's configuration has.
_DINOV3_KEYS = ("rope_base", "rope_normalize_coords", "rope_periods_loaded", "n_storage_tokens", "rope_dtype")

_VARIANT_BY_WIDTH = {384: "small", 768: "base", 1024: "large"}
_ENCODER_KEYS = ("embed_dim", "depth", "num_heads", "num_register_tokens")


def encoder_family(config: Mapping[str, Any] | None) -> str:
    """``"dinov3"`` when the config names DINOv3 or has its RoPE / storage-token keys, else ``"dinov2"``."""
    if not config:
        return "dinov2"
    named = str(config.get("encoder_family", "")).lower().replace("-", "").replace(" ", "")
    return "dinov3" if "dinov3" in named or any(key in config for key in _DINOV3_KEYS) else "dinov2"


def complete_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The official defaults updated with ``config``; keys neither model reads (seeds, paths ...) are dropped.

    A DINOv3 config's storage tokens (``n_storage_tokens``) become ``num_register_tokens`` and its patch size
    defaults to 16.

    Raises:
        ValueError: a patch size the config's encoder family does not have.
    """
    from anomalib_dinomaly.encoder_dinov3 import DINOV3_PATCH_SIZE

    config = dict(config or {})
    family = encoder_family(config)
    merged = dict(OFFICIAL_DEFAULT_CONFIG)
    if family == "dinov3":
        merged["patch_size"] = DINOV3_PATCH_SIZE
        if "n_storage_tokens" in config:
            config["num_register_tokens"] = config["n_storage_tokens"]
    merged.update({key: config[key] for key in (*OFFICIAL_CONFIG_KEYS, *DINOMALY2_CONFIG_KEYS) if key in config})
    expected_patch = DINOV3_PATCH_SIZE if family == "dinov3" else PATCH_SIZE
    if merged["patch_size"] != expected_patch:
        msg = (
            f"The config's encoder is {family.upper()}, whose patch size is {expected_patch}, "
            f"but it says patch_size {merged['patch_size']}."
        )
        raise ValueError(msg)
    _check_supported(merged, family)
    return merged


def _check_supported(config: Mapping[str, Any], family: str) -> None:
    """Refuse settings of the preview code that this package does not implement, naming the key."""
    unsupported = {
        "remove_class_token": (config.get("remove_class_token", False), False),
        "mask_neighbor_size": (config.get("mask_neighbor_size", 0), 0),
        "car_layer_norm_affine": (config.get("car_layer_norm_affine", False), False),
    }
    if family == "dinov3":
        unsupported["rope_normalize_coords"] = (config.get("rope_normalize_coords", "separate"), "separate")
        unsupported["encoder_layernorm_eps"] = (config.get("encoder_layernorm_eps", 1e-5), 1e-5)
    else:
        unsupported["encoder_layernorm_eps"] = (config.get("encoder_layernorm_eps", 1e-6), 1e-6)
    bad = {key: value for key, (value, supported) in unsupported.items() if value != supported}
    if bad:
        supported = {key: value for key, (_, value) in unsupported.items() if key in bad}
        msg = f"Unsupported setting(s) in the config: {bad}; this package implements {supported}."
        raise ValueError(msg)


#: Official bottleneck key prefixes -> ours: Dinomaly's ``ModuleList([bMlp])``, Dinomaly2's two Sequentials.
MLP_BOTTLENECK_KEYS = {"bottleneck.0.": "bottleneck."}
COMPRESSED_BOTTLENECK_KEYS = {
    "bottleneck.0.0.": "bottleneck.compress.",
    "bottleneck.1.0.": "bottleneck.fc1.",
    "bottleneck.1.3.": "bottleneck.fc2.",
}


def _rename_bottleneck(key: str, prefixes: Mapping[str, str]) -> str | None:
    for official, ours in prefixes.items():
        if key.startswith(official):
            return ours + key.removeprefix(official)
    return None


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    num_register_tokens: int,
    last_target_layer: int,
    bottleneck_keys: Mapping[str, str] = MLP_BOTTLENECK_KEYS,
    encoder_family: str = "dinov2",
) -> dict[str, torch.Tensor]:
    """Map official ``ViTill`` (or Dinomaly2 preview ``Dinomaly``) keys to :class:`DinomalyModel` keys.

    - DINOv2 ``encoder.*`` -> ``encoder.vit.*`` (timm layout): ``register_tokens`` -> ``reg_token``; with
      registers the CLS position embedding is folded into ``cls_token`` (registers carry none, so timm stores
      the patch grid alone), which is the same sum DINOv2 computes. DINOv3 ``encoder.*`` keys are returned
      under ``encoder.`` in Meta's names, for the encoder's own ``load_pretrained``.
    - ``bottleneck.*`` renamed by ``bottleneck_keys``; ``decoder.*`` unchanged.
    - Dropped because Dinomaly never uses them: DINOv2's ``encoder.mask_token``, the final ``encoder.norm.*``,
      and encoder blocks after ``last_target_layer``.

    Args:
        state_dict: official state dict (a leading ``module.`` from DDP is accepted).
        num_register_tokens: register tokens of the encoder (0 or 4).
        last_target_layer: index of the last encoder block Dinomaly reads.
        bottleneck_keys: :data:`MLP_BOTTLENECK_KEYS` (Dinomaly) or :data:`COMPRESSED_BOTTLENECK_KEYS` (Dinomaly2).
        encoder_family: ``"dinov2"`` or ``"dinov3"``.

    Returns:
        A new state dict for :class:`DinomalyModel`.

    Raises:
        KeyError: an unknown key, or a required one missing.
    """
    source = {key.removeprefix("module."): value for key, value in state_dict.items()}
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in source.items():
        if key.startswith("encoder.") and encoder_family == "dinov3":
            name = key.removeprefix("encoder.")
            if name.startswith("norm."):
                continue
            if not name.startswith("blocks.") or int(name.split(".")[1]) <= last_target_layer:
                converted[key] = value
        elif key.startswith("encoder."):
            name = key.removeprefix("encoder.")
            if name == "mask_token" or name.startswith("norm."):
                continue
            if name.startswith("blocks."):
                if int(name.split(".")[1]) <= last_target_layer:
                    converted[f"encoder.vit.{name}"] = value
            elif name.startswith("patch_embed."):
                converted[f"encoder.vit.{name}"] = value
            elif name == "register_tokens":
                converted["encoder.vit.reg_token"] = value
            elif name == "cls_token":
                converted["encoder.vit.cls_token"] = value
            elif name == "pos_embed":
                converted["encoder.vit.pos_embed"] = value
            else:
                unknown.append(key)
        elif key.startswith("bottleneck.") and _rename_bottleneck(key, bottleneck_keys):
            converted[_rename_bottleneck(key, bottleneck_keys)] = value
        elif key.startswith("decoder."):
            converted[key] = value
        else:
            unknown.append(key)
    if unknown:
        msg = f"Unknown keys in the official checkpoint: {unknown[:10]}{'...' if len(unknown) > 10 else ''}."
        raise KeyError(msg)
    if encoder_family == "dinov3":
        return converted
    for required in ("encoder.vit.cls_token", "encoder.vit.pos_embed"):
        if required not in converted:
            msg = f"The official checkpoint has no {required.replace('vit.', '')!r}; is it a Dinomaly ViTill state dict?"
            raise KeyError(msg)
    if num_register_tokens > 0:
        if "encoder.vit.reg_token" not in converted:
            msg = f"The config says {num_register_tokens} register tokens but the checkpoint has no 'encoder.register_tokens'."
            raise KeyError(msg)
        pos_embed = converted["encoder.vit.pos_embed"]
        converted["encoder.vit.cls_token"] = converted["encoder.vit.cls_token"] + pos_embed[:, :1]
        converted["encoder.vit.pos_embed"] = pos_embed[:, 1:]
    return converted


def _encoder_name(config: Mapping[str, Any]) -> str:
    """The named variant whose family matches a completed config (its widths may still be overridden)."""
    width = _VARIANT_BY_WIDTH.get(config["embed_dim"], "base")
    if encoder_family(config) == "dinov3":
        return f"dinov3_vit_{width}_16"
    return f"{'dinov2reg' if config['num_register_tokens'] else 'dinov2'}_vit_{width}_14"


def is_dinomaly2_config(config: Mapping[str, Any]) -> bool:
    """Whether a completed config describes Dinomaly2's bottleneck (``bottleneck_hidden_dims``) or recentering."""
    return "bottleneck_hidden_dims" in config or bool(config.get("context_aware_recenter", False))


def _architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """Encoder shape and Dinomaly layout of a completed config, as keyword arguments of ``Dinomaly``."""
    return {
        **{key: config[key] for key in (*_ENCODER_KEYS, "decoder_depth", "bottleneck_dropout")},
        "target_layers": list(config["target_layers"]),
        "fuse_layer_encoder": [list(group) for group in config["fuse_layer_encoder"]],
        "fuse_layer_decoder": [list(group) for group in config["fuse_layer_decoder"]],
    }


def _bottleneck_keys(config: Mapping[str, Any]) -> Mapping[str, str]:
    return COMPRESSED_BOTTLENECK_KEYS if "bottleneck_hidden_dims" in config else MLP_BOTTLENECK_KEYS


def _load_official_weights(
    model: DinomalyModel,
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
) -> None:
    """Read (path) or take (state dict) official weights, convert their keys and load them strictly into ``model``."""
    state_dict = load_weights_file(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
    family = encoder_family(config)
    converted = convert_official_state_dict(
        state_dict, config["num_register_tokens"], config["target_layers"][-1], _bottleneck_keys(config), family
    )
    if family == "dinov3":
        encoder_state = {k.removeprefix("encoder."): converted.pop(k) for k in list(converted) if k.startswith("encoder.")}
        model.encoder.load_pretrained(encoder_state, source="the official checkpoint")
        missing, unexpected = model.load_state_dict(converted, strict=False)
        missing = [key for key in missing if not key.startswith("encoder.")]
        if missing or unexpected:
            msg = f"The official checkpoint does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}."
            raise KeyError(msg)
        return
    model.load_state_dict(converted, strict=True)


def _build_encoder(config: Mapping[str, Any]) -> nn.Module:
    shape = {key: config[key] for key in _ENCODER_KEYS}
    if encoder_family(config) == "dinov3":
        from anomalib_dinomaly.encoder_dinov3 import DinoV3Encoder

        return DinoV3Encoder(_encoder_name(config), pretrained=False, **shape)
    return DinoV2Encoder(
        _encoder_name(config),
        pretrained=False,
        pos_grid=config["pos_grid"],
        interpolate_offset=config["interpolate_offset"],
        **shape,
    )


def build_official_model(config: Mapping[str, Any] | None = None) -> DinomalyModel:
    """A randomly initialised :class:`DinomalyModel` with the architecture and parts of an official config.

    Each part comes from its own keys: the bottleneck from ``bottleneck_hidden_dims`` (Dinomaly2's compressed
    bottleneck; Dinomaly's MLP without it), the encoder-group head from ``context_aware_recenter`` (with
    ``car_layer_norm_eps``), the decoder from ``decoder_depth``, ``decoder_num_heads``, ``mlp_ratio``,
    ``decoder_layernorm_eps`` and ``linear_attention_eps``.
    """
    config = complete_config(config)
    encoder = _build_encoder(config)
    dim = encoder.embed_dim
    mlp_ratio = float(config.get("mlp_ratio", 4.0))
    dropout = config["bottleneck_dropout"]
    if "bottleneck_hidden_dims" in config:
        compressed_dim, hidden_dim = config["bottleneck_hidden_dims"]
        bottleneck = build_bottleneck("compressed", dim, dropout, compressed_dim=compressed_dim, hidden_dim=hidden_dim)
    else:
        bottleneck = build_bottleneck("mlp", dim, dropout, mlp_ratio)
    decoder = build_decoder(
        dim,
        config.get("decoder_num_heads", config["num_heads"]),
        config["decoder_depth"],
        mlp_ratio,
        config.get("decoder_layernorm_eps", DECODER_NORM_EPS),
        config.get("linear_attention_eps", ATTENTION_EPS),
    )
    head = None
    if config.get("context_aware_recenter", False):
        head = ContextAwareRecentering(config.get("car_layer_norm_eps", RECENTERING_EPS))
    return DinomalyModel(
        encoder,
        target_layers=list(config["target_layers"]),
        fuse_layer_encoder=[list(group) for group in config["fuse_layer_encoder"]],
        fuse_layer_decoder=[list(group) for group in config["fuse_layer_decoder"]],
        bottleneck=bottleneck,
        decoder=decoder,
        encoder_group_head=head,
        fuse_layer_bottleneck=config.get("fuse_layer_bottleneck"),
    )


def from_official_checkpoint(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
) -> DinomalyModel:
    """Build a :class:`DinomalyModel` (eval mode) from an official Dinomaly or Dinomaly2 preview checkpoint.

    Args:
        checkpoint: path to a ``.pth`` / ``.safetensors`` file (read without executing code), or a state dict,
            in the official format (``encoder.*`` under Meta's DINOv2 or DINOv3 names, ``bottleneck.*``,
            ``decoder.*``).
        config: architecture keys (see :data:`OFFICIAL_CONFIG_KEYS` and :data:`DINOMALY2_CONFIG_KEYS`), e.g. a
            golden folder's ``config.json``; ``None`` = official Dinomaly ViT-B/14-reg4.

    Returns:
        The model with every official weight loaded strictly.
    """
    config = complete_config(config)
    model = build_official_model(config)
    _load_official_weights(model, checkpoint, config)
    return model.eval()


def dinomaly_from_official_checkpoint(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
    **module_kwargs: Any,  # noqa: ANN401
) -> Dinomaly:
    """An anomalib :class:`~anomalib_dinomaly.Dinomaly` module holding the weights of an official checkpoint.

    Save it as a plugin checkpoint (``engine.trainer.save_checkpoint`` after ``engine.validate``, which fits
    thresholds and normalisation) or export it with ``engine.export``: see ``examples/official_to_openvino.py``.

    Args:
        checkpoint: path or state dict in the official format, as for :func:`from_official_checkpoint`.
        config: architecture keys (see :data:`OFFICIAL_CONFIG_KEYS`); ``None`` = official ViT-B/14-reg4.
        **module_kwargs: other :class:`~anomalib_dinomaly.Dinomaly` arguments (``image_size``, ``crop_size``, ...).

    Returns:
        The module in eval mode; its encoder weights come from ``checkpoint`` (nothing is downloaded).

    Raises:
        ValueError: a config whose position-embedding grid or offset is not DINOv2's (the module builds
            DINOv2's), or ``module_kwargs`` that repeat an architecture key.
    """
    from anomalib_dinomaly.lightning_model import Dinomaly  # the Lightning module imports anomalib: load on use

    config = complete_config(config)
    if (config["pos_grid"], config["interpolate_offset"]) != (PRETRAINING_GRID, 0.1):
        msg = (
            f"pos_grid {config['pos_grid']} / interpolate_offset {config['interpolate_offset']} differ from DINOv2's "
            f"({PRETRAINING_GRID} / 0.1); use from_official_checkpoint for such a model."
        )
        raise ValueError(msg)
    architecture = _architecture(config)
    repeated = sorted(set(architecture) & set(module_kwargs))
    if repeated:
        msg = f"{repeated} come from the official config; pass them in `config`, not as module arguments."
        raise ValueError(msg)
    module = Dinomaly(encoder_name=_encoder_name(config), pretrained=False, **architecture, **module_kwargs)
    _load_official_weights(module.model, checkpoint, config)
    return module.eval()

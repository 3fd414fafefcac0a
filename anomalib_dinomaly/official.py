"""Official Dinomaly checkpoints (``guojiajeremy/Dinomaly``, ``ViTill.state_dict()``) to this package's model.

The key conversion is a pure function; every official key is either mapped or dropped for a stated
reason, and anything else is an error (no silent ``strict=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anomalib_dinomaly.encoder import (
    DEFAULT_ENCODER,
    ENCODER_VARIANTS,
    INTERPOLATE_OFFSET,
    PATCH_SIZE,
    PRETRAINING_GRID,
    DinoV2Encoder,
    load_weights_file,
    resolve_variant,
)
from anomalib_dinomaly.layers import DEFAULT_BOTTLENECK_DROPOUT
from anomalib_dinomaly.torch_model import DEFAULT_DECODER_DEPTH, DEFAULT_GROUPS, DinomalyModel

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

_ENCODER_KEYS = ("embed_dim", "depth", "num_heads", "num_register_tokens")


def official_default_config() -> dict[str, Any]:
    """The official ``dinomaly_mvtec_uni.py`` setting (ViT-B/14 with 4 registers): this package's defaults.

    The encoder shape is timm's for the default variant; layers, groups, depth and dropout are the
    defaults of :class:`DinomalyModel`.
    """
    variant = resolve_variant(DEFAULT_ENCODER)
    return {
        **variant.architecture,
        "patch_size": variant.patch_size,
        "pos_grid": PRETRAINING_GRID,
        "interpolate_offset": INTERPOLATE_OFFSET,
        "target_layers": list(variant.target_layers),
        "fuse_layer_encoder": [list(group) for group in DEFAULT_GROUPS],
        "fuse_layer_decoder": [list(group) for group in DEFAULT_GROUPS],
        "decoder_depth": DEFAULT_DECODER_DEPTH,
        "bottleneck_dropout": DEFAULT_BOTTLENECK_DROPOUT,
    }


def complete_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The official defaults updated with ``config`` (extra keys, e.g. from the golden ``config.json``, are ignored).

    Raises:
        ValueError: a patch size other than 14.
    """
    merged = official_default_config()
    if config:
        merged.update({key: config[key] for key in OFFICIAL_CONFIG_KEYS if key in config})
    if merged["patch_size"] != PATCH_SIZE:
        msg = f"Only DINOv2's patch size {PATCH_SIZE} is supported, the config says {merged['patch_size']}."
        raise ValueError(msg)
    return merged


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    num_register_tokens: int,
    last_target_layer: int,
) -> dict[str, torch.Tensor]:
    """Map official ``ViTill`` keys to :class:`DinomalyModel` keys.

    - ``encoder.*`` -> ``encoder.vit.*`` (timm layout): ``register_tokens`` -> ``reg_token``; with registers
      the CLS position embedding is folded into ``cls_token`` (registers carry none, so timm stores the
      patch grid alone), which is the same sum DINOv2 computes.
    - ``bottleneck.0.*`` -> ``bottleneck.*``; ``decoder.*`` unchanged.
    - Dropped because Dinomaly never uses them: ``encoder.mask_token``, the final ``encoder.norm.*``, and
      encoder blocks after ``last_target_layer``.

    Args:
        state_dict: official state dict (a leading ``module.`` from DDP is accepted).
        num_register_tokens: register tokens of the encoder (0 or 4).
        last_target_layer: index of the last encoder block Dinomaly reads.

    Returns:
        A new state dict for :class:`DinomalyModel`.

    Raises:
        KeyError: an unknown key, or a required one missing.
    """
    source = {key.removeprefix("module."): value for key, value in state_dict.items()}
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in source.items():
        if key.startswith("encoder."):
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
        elif key.startswith("bottleneck.0."):
            converted[f"bottleneck.{key.removeprefix('bottleneck.0.')}"] = value
        elif key.startswith("decoder."):
            converted[key] = value
        else:
            unknown.append(key)
    if unknown:
        msg = f"Unknown keys in the official checkpoint: {unknown[:10]}{'...' if len(unknown) > 10 else ''}."
        raise KeyError(msg)
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
    """The named variant of the config's width, with or without registers as the config says; ViT-B for other
    widths (whose shape the config then overrides)."""
    registers = bool(config["num_register_tokens"])
    candidates = [name for name in ENCODER_VARIANTS if name.startswith("dinov2reg_" if registers else "dinov2_vit")]
    same_width = [name for name in candidates if resolve_variant(name).embed_dim == config["embed_dim"]]
    return same_width[0] if same_width else f"{'dinov2reg' if registers else 'dinov2'}_vit_base_14"


def _architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """Encoder shape and Dinomaly layout of a completed config, as keyword arguments of ``Dinomaly``."""
    return {
        **{key: config[key] for key in (*_ENCODER_KEYS, "decoder_depth", "bottleneck_dropout")},
        "target_layers": list(config["target_layers"]),
        "fuse_layer_encoder": [list(group) for group in config["fuse_layer_encoder"]],
        "fuse_layer_decoder": [list(group) for group in config["fuse_layer_decoder"]],
    }


def _load_official_weights(
    model: DinomalyModel,
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
) -> None:
    """Read (path) or take (state dict) official weights, convert their keys and load them strictly into ``model``."""
    state_dict = load_weights_file(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
    converted = convert_official_state_dict(state_dict, config["num_register_tokens"], config["target_layers"][-1])
    model.load_state_dict(converted, strict=True)


def build_official_model(config: Mapping[str, Any] | None = None) -> DinomalyModel:
    """A randomly initialised :class:`DinomalyModel` with the architecture of an official config."""
    config = complete_config(config)
    layout = _architecture(config)
    shape = {key: layout.pop(key) for key in _ENCODER_KEYS}
    encoder = DinoV2Encoder(
        _encoder_name(config),
        pretrained=False,
        pos_grid=config["pos_grid"],
        interpolate_offset=config["interpolate_offset"],
        **shape,
    )
    return DinomalyModel(encoder, **layout)


def from_official_checkpoint(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
) -> DinomalyModel:
    """Build a :class:`DinomalyModel` (eval mode) from an official Dinomaly checkpoint.

    Args:
        checkpoint: path to a ``.pth`` / ``.safetensors`` file (read without executing code), or a state dict,
            in the official format (``encoder.*``, ``bottleneck.*``, ``decoder.*``).
        config: architecture keys (see :data:`OFFICIAL_CONFIG_KEYS`); ``None`` = official ViT-B/14-reg4.

    Returns:
        The model with every official weight loaded strictly.
    """
    config = complete_config(config)
    model = build_official_model(config)
    _load_official_weights(model, checkpoint, config)
    return model.eval()


def module_from_official_checkpoint(
    module_class: type[Dinomaly],
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None = None,
    **module_kwargs: Any,  # noqa: ANN401
) -> Dinomaly:
    """A ``module_class`` module holding the weights of an official checkpoint: the implementation of
    :meth:`Dinomaly.from_official_checkpoint <anomalib_dinomaly.Dinomaly.from_official_checkpoint>`.

    Raises:
        ValueError: a config whose position-embedding grid or offset is not DINOv2's (the module builds
            DINOv2's), or ``module_kwargs`` that repeat an architecture key.
    """
    config = complete_config(config)
    if (config["pos_grid"], config["interpolate_offset"]) != (PRETRAINING_GRID, INTERPOLATE_OFFSET):
        msg = (
            f"pos_grid {config['pos_grid']} / interpolate_offset {config['interpolate_offset']} differ from DINOv2's "
            f"({PRETRAINING_GRID} / {INTERPOLATE_OFFSET}); use from_official_checkpoint for such a model."
        )
        raise ValueError(msg)
    architecture = _architecture(config)
    repeated = sorted(set(architecture) & set(module_kwargs))
    if repeated:
        msg = f"{repeated} come from the official config; pass them in `config`, not as module arguments."
        raise ValueError(msg)
    module = module_class(encoder_name=_encoder_name(config), pretrained=False, **architecture, **module_kwargs)
    _load_official_weights(module.model, checkpoint, config)
    return module.eval()

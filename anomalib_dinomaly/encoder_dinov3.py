"""Frozen DINOv3 encoder: named ViT/16 variants on timm's Eva, Meta/timm weight loading, RoPE periods as stored.

The network is timm's ``vit_*_patch16_dinov3`` (an ``Eva`` with ``rope_type='dinov3'``: same blocks, masked
k bias, LayerScale, LayerNorm eps 1e-5 and RoPE numerics as Meta's ``DinoVisionTransformer``). Ours are:

- the weight conversion, because timm's ``checkpoint_filter_fn`` recognises DINOv3 only by ``storage_tokens``
  (a checkpoint without storage tokens is mis-read) and drops the stored RoPE ``periods``;
- the RoPE ``periods`` buffer is persistent here and loaded from Meta's checkpoint, because timm recomputes it
  from the formula and Meta's code computes with the stored (bf16-rounded, or any other) values;
- the RoPE table (same formula as timm's and Meta's), because timm's turns the grid size into Python floats,
  so an ONNX export with dynamic height/width would keep the traced grid's coordinates;
- the block loop, which draws the train-mode RoPE coordinate rescale once per block as Meta's
  ``get_intermediate_layers`` does (timm's Eva builds one table per forward for all blocks, and its
  ``vit_*_patch16_dinov3`` definitions leave the option out).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models.eva import Eva
from torch import nn

from anomalib_dinomaly.encoder import (
    WEIGHTS_DOWNLOAD_HINT,
    FrozenViTEncoder,
    PretrainedWeightsError,
    load_weights_file,
)

logger = logging.getLogger(__name__)

DINOV3_PATCH_SIZE = 16
DEFAULT_DINOV3_ENCODER = "dinov3_vit_base_16"
META_DOWNLOAD_PAGE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
LICENCE_URL = "https://ai.meta.com/resources/models-and-libraries/dinov3-license/"


@dataclass(frozen=True)
class DinoV3Variant:
    """A published DINOv3 ViT/16 variant: architecture, default Dinomaly layers, geometry and weight files."""

    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    num_register_tokens: int  # DINOv3's "storage tokens"
    target_layers: tuple[int, ...]
    meta_checkpoint: str
    patch_size: int = DINOV3_PATCH_SIZE
    default_image_size: int = 512
    default_crop_size: int = 448  # 28 x 28 patches, the grid of ViT/14 at 392

    @property
    def hub_url(self) -> str:
        """Hugging Face page of timm's copy of the weights (Meta's biases verbatim: the ``_qkvb`` model)."""
        return f"https://huggingface.co/timm/{self.timm_name}"

    @property
    def hub_url_without_bias(self) -> str:
        """timm's other copy, without the (all-zero) qkv biases; it loads as well."""
        return self.hub_url.replace("_qkvb", "")


_SMALL_BASE_LAYERS = (2, 3, 4, 5, 6, 7, 8, 9)
_LARGE_LAYERS = (4, 6, 8, 10, 12, 14, 16, 18)

# Names follow the Dinomaly2 preview (``dinov3_vit_base_16``); timm names are accepted too.
DINOV3_VARIANTS: dict[str, DinoV3Variant] = {
    "dinov3_vit_small_16": DinoV3Variant(
        "vit_small_patch16_dinov3_qkvb.lvd1689m", 384, 12, 6, 4, _SMALL_BASE_LAYERS,
        "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    ),
    "dinov3_vit_base_16": DinoV3Variant(
        "vit_base_patch16_dinov3_qkvb.lvd1689m", 768, 12, 12, 4, _SMALL_BASE_LAYERS,
        "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
    ),
    "dinov3_vit_large_16": DinoV3Variant(
        "vit_large_patch16_dinov3_qkvb.lvd1689m", 1024, 24, 16, 4, _LARGE_LAYERS,
        "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
    ),
}
_TIMM_ALIASES = {
    alias: key
    for key, variant in DINOV3_VARIANTS.items()
    for alias in (variant.timm_name.split(".")[0], variant.timm_name.split(".")[0].removesuffix("_qkvb"))
}


def is_dinov3_name(name: str) -> bool:
    """Whether ``name`` names a DINOv3 variant (preview or timm name, with or without a ``.tag``)."""
    key = name.split(".")[0]
    return key in DINOV3_VARIANTS or key in _TIMM_ALIASES


def known_dinov3_names() -> str:
    """The accepted names, for error messages."""
    return ", ".join(sorted(DINOV3_VARIANTS)) + " (or their timm names: " + ", ".join(sorted(_TIMM_ALIASES)) + ")"


def resolve_dinov3_variant(name: str) -> DinoV3Variant:
    """Look up a DINOv3 variant by its preview name (``dinov3_vit_base_16``) or timm name.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    key = name.split(".")[0]
    key = _TIMM_ALIASES.get(key, key)
    if key not in DINOV3_VARIANTS:
        msg = f"Unknown DINOv3 encoder name {name!r}. Known DINOv3 encoders: {known_dinov3_names()}."
        raise ValueError(msg)
    return DINOV3_VARIANTS[key]


def _is_meta_format(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(
        key.startswith("rope_embed.") or key.endswith((".ls1.gamma", ".bias_mask")) or key == "storage_tokens"
        for key in state_dict
    )


def _split_masked_qkv_bias(
    key: str, bias: torch.Tensor, bias_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, v) thirds of a Meta ``qkv.bias``; the k third must be masked (``bias_mask`` 0) or zero."""
    q_bias, k_bias, v_bias = bias.chunk(3, dim=-1)
    if bias_mask is not None:
        expected = torch.cat([torch.ones_like(q_bias), torch.zeros_like(k_bias), torch.ones_like(v_bias)])
        if not torch.equal(bias_mask.to(expected.dtype), expected):
            msg = (
                f"{key}_mask is not [1 (q), 0 (k), 1 (v)]: only DINOv3 checkpoints with a masked k bias "
                "(all published ones) are supported."
            )
            raise PretrainedWeightsError(msg)
    elif k_bias.abs().max() > 0:
        msg = f"{key} has a non-zero k bias and no bias_mask: an unmasked k bias is not supported."
        raise PretrainedWeightsError(msg)
    return q_bias, v_bias


def convert_dinov3_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta-format or timm-format DINOv3 weights in timm's ``Eva`` layout (the keys of ``DinoV3Encoder.vit``).

    Meta -> timm: ``storage_tokens`` -> ``reg_token``, ``ls1/ls2.gamma`` -> ``gamma_1/gamma_2``,
    ``rope_embed.periods`` -> ``rope.periods`` (kept: the model computes with it), ``attn.qkv.bias`` -> ``q_bias``
    and ``v_bias`` (the k third is masked by ``bias_mask``, so it is dropped), ``mask_token`` dropped (it enters
    Meta's forward only as ``cls_token + 0 * mask_token``). timm-format keys pass through. Weights without any
    qkv bias (timm's non-``_qkvb`` models) get zero q/v biases, which is what those models compute.

    Args:
        state_dict: Meta's ``dinov3_vit*16_pretrain_*.pth`` keys or timm's ``vit_*_patch16_dinov3*`` keys.

    Returns:
        The converted state dict (tensors are shared, not copied).
    """
    if not _is_meta_format(state_dict):
        converted = dict(state_dict)
    else:
        converted = {}
        for key, value in state_dict.items():
            if key == "mask_token" or key.endswith(".bias_mask"):
                continue
            if key.endswith("attn.qkv.bias"):
                q_bias, v_bias = _split_masked_qkv_bias(key, value, state_dict.get(f"{key}_mask"))
                converted[key.replace("qkv.bias", "q_bias")] = q_bias
                converted[key.replace("qkv.bias", "v_bias")] = v_bias
                continue
            key = key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
            key = key.replace("rope_embed.periods", "rope.periods")
            converted["reg_token" if key == "storage_tokens" else key] = value
    if not any(key.endswith("attn.q_bias") for key in converted):
        for key in [key for key in converted if key.endswith("attn.qkv.weight")]:
            width = converted[key].shape[0] // 3
            converted[key.replace("qkv.weight", "q_bias")] = converted[key].new_zeros(width)
            converted[key.replace("qkv.weight", "v_bias")] = converted[key].new_zeros(width)
    return converted


class DinoV3Encoder(FrozenViTEncoder):
    """Frozen DINOv3 ViT/16 returning raw block outputs (no final norm), as Dinomaly and Dinomaly2 use them.

    Tokens are ``[CLS, storage tokens, patches]``; position enters only through RoPE on the patch tokens.

    Args:
        name: variant name (see :data:`DINOV3_VARIANTS`), e.g. ``"dinov3_vit_base_16"``, or a timm name.
        pretrained: download the published weights through timm (Hugging Face hub).
        weights: a local weights file (Meta's ``dinov3_vit*16_pretrain_lvd1689m-*.pth`` or timm's
            ``model.safetensors``), used instead of a download.
        embed_dim, depth, num_heads, num_register_tokens: override the variant's architecture (small random
            encoders for tests, or checkpoints of another size); ``num_register_tokens`` is the number of
            DINOv3 storage tokens (0 allowed).
        rope_rescale_coords: Meta's train-time RoPE augmentation (``pos_embed_rope_rescale_coords``, 2 in
            Meta's models): in train mode each block's patch coordinates are multiplied by a factor drawn
            log-uniformly from [1/R, R]. ``None`` (default) keeps the encoder deterministic in both modes.
    """

    def __init__(
        self,
        name: str = DEFAULT_DINOV3_ENCODER,
        pretrained: bool = False,
        weights: str | Path | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        num_register_tokens: int | None = None,
        rope_rescale_coords: float | None = None,
    ) -> None:
        super().__init__()
        if rope_rescale_coords is not None and not rope_rescale_coords >= 1:
            msg = f"rope_rescale_coords must be >= 1 (a scale factor; Meta uses 2) or None, got {rope_rescale_coords}."
            raise ValueError(msg)
        self.variant = resolve_dinov3_variant(name)
        self.name = name
        embed_dim = embed_dim or self.variant.embed_dim
        num_heads = num_heads or self.variant.num_heads
        if embed_dim % num_heads or (embed_dim // num_heads) % 4:
            msg = (
                f"embed_dim {embed_dim} must split into num_heads {num_heads} heads whose width is a multiple "
                "of 4 (2D RoPE rotates pairs on two axes)."
            )
            raise ValueError(msg)
        storage_tokens = self.variant.num_register_tokens if num_register_tokens is None else num_register_tokens
        self.vit: Eva = timm.create_model(
            self.variant.timm_name.split(".")[0],
            pretrained=False,
            embed_dim=embed_dim,
            depth=depth or self.variant.depth,
            num_heads=num_heads,
            num_reg_tokens=storage_tokens,
            qkv_bias=True,
            num_classes=0,
        )
        # Persistent, so the loaded periods are what the model computes with and a checkpoint round-trips them.
        self.vit.rope.register_buffer("periods", self.vit.rope.periods, persistent=True)
        self.rope_rescale_coords = rope_rescale_coords
        if weights is not None:
            self.load_pretrained(load_weights_file(weights), source=str(weights))
        elif pretrained:
            self._download_pretrained()
        self.requires_grad_(False)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        # timm's RoPE module recomputes its periods from the formula (and makes them non-persistent) when a
        # cast such as .half() lowers their precision; keep the loaded values, in float32 as timm keeps them.
        stored = self.vit.rope.periods
        super()._apply(fn, *args, **kwargs)
        rope = self.vit.rope
        rope.register_buffer("periods", stored.to(rope.periods.device, rope.periods.dtype), persistent=True)
        return self

    @property
    def num_register_tokens(self) -> int:
        """Storage (register) tokens: 4 for the published models."""
        return self.vit.num_prefix_tokens - 1

    def _drop_blocks_after(self, count: int) -> None:
        self.vit.blocks = self.vit.blocks[:count]
        self.vit.norm = nn.Identity()

    def load_pretrained(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """Load Meta-format or timm-format DINOv3 weights strictly (the final norm may be absent).

        Meta's stored RoPE periods are loaded; timm-format files hold none (timm recomputes them), so the
        formula's periods are used for those.

        Raises:
            PretrainedWeightsError: naming the missing and unexpected keys when the weights do not fit.
        """
        problem = ""
        try:
            converted = convert_dinov3_state_dict(state_dict)
            if "rope.periods" not in converted:
                self.vit.rope.reset_parameters()  # the formula, as timm computes it
            missing, unexpected = self.vit.load_state_dict(converted, strict=False)
        except (RuntimeError, ValueError, KeyError) as error:
            problem = f"{type(error).__name__}: {str(error)[:400]}"
        else:
            missing = [key for key in missing if not key.startswith("norm.") and key != "rope.periods"]
            unexpected = [key for key in unexpected if not key.startswith(("head.", "fc_norm."))]
            if missing or unexpected:
                problem = (
                    f"in timm's layout, missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                    f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
                )
        if problem:
            msg = (
                f"Weights from {source} do not fit encoder {self.name!r} (D={self.embed_dim}, "
                f"depth={len(self.vit.blocks)}, heads={self.num_heads}, storage tokens={self.num_register_tokens}): "
                f"{problem}. Check that the file is the DINOv3 variant named by `encoder_name`, "
                "or set embed_dim/depth/num_heads/num_register_tokens to the checkpoint's."
            )
            raise PretrainedWeightsError(msg)
        logger.info("Loaded DINOv3 weights for %s from %s", self.name, source)

    def _download_pretrained(self) -> None:
        variant = self.variant
        try:
            reference = timm.create_model(variant.timm_name, pretrained=True, num_classes=0)
        except Exception as error:
            msg = (
                f"Could not get the pretrained DINOv3 weights for encoder {self.name!r} "
                f"({type(error).__name__}: {str(error)[:200]}).\n"
                f"  They come from the Hugging Face hub ({variant.hub_url} or {variant.hub_url_without_bias}, "
                f"file model.safetensors) or from Meta (file {variant.meta_checkpoint}). Meta's downloads are "
                f"gated: accept Meta's DINOv3 licence on {META_DOWNLOAD_PAGE} to get the links. The weights are "
                f"under the DINOv3 licence ({LICENCE_URL}), not Apache-2.0.\n"
                f"{WEIGHTS_DOWNLOAD_HINT}"
            )
            raise PretrainedWeightsError(msg) from error
        self.load_pretrained(reference.state_dict(), source=variant.hub_url)

    def patch_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """(h, w) patch grid of a (B, 3, H, W) batch; H and W must be positive multiples of 16."""
        height, width = images.shape[-2:]
        patch = self.patch_size
        if height % patch or width % patch or height < patch or width < patch:
            msg = (
                f"Input size {height}x{width} is not a multiple of the patch size {patch}. "
                f"Use a crop/resize that is, e.g. 448 (= 28 x {patch}) or 512 (= 32 x {patch})."
            )
            raise ValueError(msg)
        return height // patch, width // patch

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-embed and prepend the class and storage tokens: ``[CLS, storage, patches]``.

        Args:
            images: (B, 3, H, W), H and W multiples of 16.

        Returns:
            (B, 1 + R + h*w, D) tokens; no absolute position embedding (DINOv3 uses RoPE only).
        """
        self.patch_grid(images)
        patches = self.vit.patch_embed(images).flatten(1, 2)  # (B, h*w, D): timm returns NHWC here
        return self._prepend_prefix_tokens(self.vit.cls_token, patches)

    def rope_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """RoPE table of a patch grid: (h*w, 2 * head_dim) = [sin | cos], rotate-half layout, as Meta computes it.

        Patch centres ``(i + 0.5) / n`` mapped to [-1, 1] per axis (row-major, [y, x]), angles
        ``2 pi coords / periods``. Ours rather than timm's ``get_embed``, whose grid turns the sizes into Python
        floats: an ONNX export with dynamic height/width would keep the traced grid's normalisation.
        In train mode with ``rope_rescale_coords`` set, every call draws a new coordinate scale (Meta's
        augmentation, same draw as Meta's ``RopePositionEmbedding``).
        """
        periods = self.vit.rope.periods
        axes = [(torch.arange(size, device=periods.device, dtype=periods.dtype) + 0.5) / size for size in grid]
        coords = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0
        if self.rope_rescale_coords is not None and self.training:
            log_max = math.log(self.rope_rescale_coords)
            coords = coords * torch.empty(1, device=coords.device, dtype=coords.dtype).uniform_(-log_max, log_max).exp()
        angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1)
        angles = torch.cat([angles, angles], dim=-1)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Raw outputs of the requested blocks.

        Args:
            images: (B, 3, H, W) normalised images, H and W multiples of 16.
            layers: block indices, ascending.

        Returns:
            One (B, 1 + R + h*w, D) tensor per requested layer.
        """
        grid = self.patch_grid(images)
        x = self.prepare_tokens(images)
        augmenting = self.training and self.rope_rescale_coords is not None
        rope = None if augmenting else self.rope_table(grid)
        wanted = set(layers)
        outputs = []
        for index, block in enumerate(self.vit.blocks[: max(layers) + 1]):
            # Meta's get_intermediate_layers asks its RoPE module once per block: one rescale draw each.
            x = block(x, rope=self.rope_table(grid) if augmenting else rope)
            if index in wanted:
                outputs.append(x)
        return outputs

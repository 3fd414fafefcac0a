"""Frozen DINOv2 encoder: named variants, DINOv2-style position-embedding interpolation, weight loading.

The network is timm's ``VisionTransformer`` (same blocks, LayerScale and names as Meta's DINOv2), cut after
the last target layer with timm's ``prune_intermediate_layers``. Only the token preparation is ours: timm's
``_pos_embed`` resamples the position embeddings to ``size=(h, w)`` with antialiasing, DINOv2 (and so
Dinomaly) with ``scale_factor=(h + 0.1) / M`` without it; the tokens differ by up to 0.38 on the golden
model at 392 px.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F  # noqa: N812
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

logger = logging.getLogger(__name__)

PATCH_SIZE = 14  # DINOv2's (timm's ``*_patch14_*`` models)
PRETRAINING_GRID = 37  # DINOv2 was trained at 518 px = 37 x 37 patches
INTERPOLATE_OFFSET = 0.1  # DINOv2's position-embedding interpolation offset
DEFAULT_ENCODER = "dinov2reg_vit_base_14"
DEFAULT_IMAGE_SIZE = 448  # resize before the center crop (Dinomaly's, for every DINOv2 size)
DEFAULT_CROP_SIZE = 392  # the model input: 28 x 28 patches


@dataclass(frozen=True, kw_only=True)
class EncoderVariant:
    """A published DINOv2 variant: its timm model, Dinomaly's default layers and where its weights live.

    The architecture (width, depth, heads, registers) is timm's for ``timm_name``; :attr:`architecture`
    reads it from timm without allocating weights.

    Attributes:
        timm_name: timm model and pretrained tag, e.g. ``vit_base_patch14_reg4_dinov2.lvd142m``.
        target_layers: encoder blocks Dinomaly reconstructs by default.
        meta_checkpoint: file name of Meta's release of the same weights.
        patch_size: side of a patch in pixels.
        default_image_size, default_crop_size: resize and center crop the variant is used at.
    """

    timm_name: str
    target_layers: tuple[int, ...]
    meta_checkpoint: str
    patch_size: int = PATCH_SIZE
    default_image_size: int = DEFAULT_IMAGE_SIZE
    default_crop_size: int = DEFAULT_CROP_SIZE

    @cached_property
    def architecture(self) -> dict[str, int]:
        """``embed_dim``, ``depth``, ``num_heads``, ``num_register_tokens`` of timm's model (built on the meta device)."""
        with torch.device("meta"):
            vit = timm.create_model(self.timm_name.split(".")[0], pretrained=False, num_classes=0)
        return {
            "embed_dim": vit.embed_dim,
            "depth": len(vit.blocks),
            "num_heads": vit.blocks[0].attn.num_heads,
            "num_register_tokens": vit.num_reg_tokens,
        }

    @property
    def embed_dim(self) -> int:
        """Token width D of the published model."""
        return self.architecture["embed_dim"]

    @property
    def depth(self) -> int:
        """Number of blocks of the published model."""
        return self.architecture["depth"]

    @property
    def num_heads(self) -> int:
        """Attention heads of the published model."""
        return self.architecture["num_heads"]

    @property
    def num_register_tokens(self) -> int:
        """Register tokens of the published model (0 or 4)."""
        return self.architecture["num_register_tokens"]

    @property
    def hub_url(self) -> str:
        """Hugging Face page of the timm weights."""
        return f"https://huggingface.co/timm/{self.timm_name}"

    @property
    def meta_url(self) -> str:
        """Download URL of Meta's original checkpoint."""
        folder = self.meta_checkpoint.split("_")[0] + "_" + self.meta_checkpoint.split("_")[1]
        return f"https://dl.fbaipublicfiles.com/dinov2/{folder}/{self.meta_checkpoint}"


_SMALL_BASE_LAYERS = (2, 3, 4, 5, 6, 7, 8, 9)
_LARGE_LAYERS = (4, 6, 8, 10, 12, 14, 16, 18)


def _dinov2(timm_name: str, target_layers: tuple[int, ...], meta_checkpoint: str) -> EncoderVariant:
    return EncoderVariant(timm_name=timm_name, target_layers=target_layers, meta_checkpoint=meta_checkpoint)


# Names follow the official Dinomaly code (``dinov2reg_vit_base_14``); timm names are accepted too.
ENCODER_VARIANTS: dict[str, EncoderVariant] = {
    "dinov2_vit_small_14": _dinov2(
        "vit_small_patch14_dinov2.lvd142m", _SMALL_BASE_LAYERS, "dinov2_vits14_pretrain.pth"
    ),
    "dinov2reg_vit_small_14": _dinov2(
        "vit_small_patch14_reg4_dinov2.lvd142m", _SMALL_BASE_LAYERS, "dinov2_vits14_reg4_pretrain.pth"
    ),
    "dinov2_vit_base_14": _dinov2("vit_base_patch14_dinov2.lvd142m", _SMALL_BASE_LAYERS, "dinov2_vitb14_pretrain.pth"),
    "dinov2reg_vit_base_14": _dinov2(
        "vit_base_patch14_reg4_dinov2.lvd142m", _SMALL_BASE_LAYERS, "dinov2_vitb14_reg4_pretrain.pth"
    ),
    "dinov2_vit_large_14": _dinov2("vit_large_patch14_dinov2.lvd142m", _LARGE_LAYERS, "dinov2_vitl14_pretrain.pth"),
    "dinov2reg_vit_large_14": _dinov2(
        "vit_large_patch14_reg4_dinov2.lvd142m", _LARGE_LAYERS, "dinov2_vitl14_reg4_pretrain.pth"
    ),
}
_TIMM_ALIASES = {v.timm_name.split(".")[0]: k for k, v in ENCODER_VARIANTS.items()}


class PretrainedWeightsError(RuntimeError):
    """Pretrained encoder weights could not be obtained or loaded; the message says how to fix it."""


def resolve_variant(name: str) -> EncoderVariant:
    """Look up a DINOv2 variant by its Dinomaly name (``dinov2reg_vit_base_14``) or timm name.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    key = name.split(".")[0]
    key = _TIMM_ALIASES.get(key, key)
    if key not in ENCODER_VARIANTS:
        known = ", ".join(sorted(ENCODER_VARIANTS)) + " (or their timm names: " + ", ".join(sorted(_TIMM_ALIASES)) + ")"
        msg = f"Unknown encoder name {name!r}. Known encoders: {known}."
        raise ValueError(msg)
    return ENCODER_VARIANTS[key]


def interpolate_pos_embed(
    grid_pos_embed: torch.Tensor,
    grid_size: tuple[int, int],
    target_size: tuple[int, int],
    offset: float = INTERPOLATE_OFFSET,
) -> torch.Tensor:
    """Resample a patch position-embedding grid the way DINOv2's ``interpolate_pos_encoding`` does.

    Bicubic, no antialiasing, computed in float32 with ``scale_factor=(n + offset) / M`` (not a target
    size, so PyTorch maps coordinates with ``M / (n + offset)``). Unlike DINOv2's code, the height
    axis is scaled by the height (DINOv2 swaps the axes for non-square inputs); square inputs match
    DINOv2 exactly.

    Args:
        grid_pos_embed: (1, M_h * M_w, D) patch position embeddings, row-major.
        grid_size: (M_h, M_w) of the stored grid.
        target_size: (h, w) patch grid of the input.
        offset: DINOv2's interpolation offset (0.1); 0 means resample to exactly ``target_size``.

    Returns:
        (1, h * w, D) position embeddings in the dtype of ``grid_pos_embed``.
    """
    if tuple(grid_size) == tuple(target_size):
        return grid_pos_embed
    dim = grid_pos_embed.shape[-1]
    grid = grid_pos_embed.float().reshape(1, grid_size[0], grid_size[1], dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((target_size[0] + offset) / grid_size[0], (target_size[1] + offset) / grid_size[1])
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    else:
        grid = F.interpolate(grid, size=target_size, mode="bicubic", antialias=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(grid_pos_embed.dtype)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file without executing code: safetensors, or a torch pickle under ``weights_only=True``.

    Args:
        path: ``*.safetensors`` (timm / Hugging Face) or ``*.pth`` / ``*.pt`` (Meta's DINOv2 release).

    Returns:
        The state dict (unwrapped from a ``state_dict`` / ``model`` / ``teacher`` entry if present).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Encoder weights file {str(path)!r} does not exist."
        raise PretrainedWeightsError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        msg = (
            f"Could not read encoder weights from {str(path)!r} ({type(error).__name__}: {error}). "
            "Expected a safetensors file or a plain PyTorch state dict (loaded with weights_only=True)."
        )
        raise PretrainedWeightsError(msg) from error
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict):
        msg = f"{str(path)!r} does not hold a state dict (found {type(state_dict).__name__})."
        raise PretrainedWeightsError(msg)
    return state_dict


def build_encoder(name: str = DEFAULT_ENCODER, **kwargs: Any) -> nn.Module:
    """The frozen encoder a name stands for: DINOv2 names -> :class:`DinoV2Encoder`, DINOv3 -> ``DinoV3Encoder``.

    Args:
        name: a DINOv2 (``dinov2reg_vit_base_14``) or DINOv3 (``dinov3_vit_base_16``) name, or their timm names.
        kwargs: the encoder's constructor arguments (``pretrained``, ``weights``, architecture overrides).

    Raises:
        ValueError: for an unknown name; the message lists the names of both families.
    """
    from anomalib_dinomaly.encoder_dinov3 import DinoV3Encoder, is_dinov3_name, known_dinov3_names

    if is_dinov3_name(name):
        return DinoV3Encoder(name, **kwargs)
    try:
        resolve_variant(name)
    except ValueError as error:
        msg = f"{error} DINOv3 encoders: {known_dinov3_names()}."
        raise ValueError(msg) from None
    return DinoV2Encoder(name, **kwargs)


#: How to get encoder weights without internet access; the last lines of a failed download's error.
WEIGHTS_DOWNLOAD_HINT = (
    "  Download either file on a machine with internet access, copy it here and pass it as "
    "`encoder_weights=/path/to/file` (CLI: --model.encoder_weights /path/to/file), "
    "or set HF_HOME to a Hugging Face cache that already holds it.\n"
    "  For a smoke test without weights, pass pretrained=False (random encoder: useless results)."
)


class FrozenViTEncoder(nn.Module):
    """What the DINOv2 and DINOv3 encoders share: the architecture read from the timm ViT ``self.vit``.

    Subclasses set ``self.variant`` (with ``patch_size``) and ``self.vit``, and drop blocks in
    :meth:`_drop_blocks_after`; token preparation, RoPE or position embeddings and weight loading are theirs.
    """

    @property
    def embed_dim(self) -> int:
        """Token width D."""
        return self.vit.embed_dim

    @property
    def patch_size(self) -> int:
        """Side of a patch in pixels (14 for DINOv2, 16 for DINOv3)."""
        return self.variant.patch_size

    @property
    def num_heads(self) -> int:
        """Attention heads per block."""
        return self.vit.blocks[0].attn.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register (DINOv3: storage) tokens in front of the patch tokens."""
        return self.vit.num_prefix_tokens

    @property
    def depth(self) -> int:
        """Number of blocks kept (the encoder never runs past the last target layer)."""
        return len(self.vit.blocks)

    def keep_blocks(self, count: int) -> None:
        """Drop the blocks after the first ``count`` and the final norm: Dinomaly never runs them."""
        if not 0 < count <= len(self.vit.blocks):
            msg = f"Cannot keep {count} blocks of an encoder with {len(self.vit.blocks)} blocks."
            raise ValueError(msg)
        self._drop_blocks_after(count)

    def _prepend_prefix_tokens(self, cls_token: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """``[CLS, registers, patches]``: (1, 1, D) and (B, h*w, D) -> (B, 1 + R + h*w, D)."""
        batch = patches.shape[0]
        tokens = [cls_token.expand(batch, -1, -1)]
        if self.vit.reg_token is not None:
            tokens.append(self.vit.reg_token.expand(batch, -1, -1))
        tokens.append(patches)
        return torch.cat(tokens, dim=1)

    def _drop_blocks_after(self, count: int) -> None:
        """Keep the first ``count`` blocks of ``self.vit`` and replace its final norm (count already checked)."""
        raise NotImplementedError


class DinoV2Encoder(FrozenViTEncoder):
    """Frozen DINOv2 ViT returning raw block outputs (no final norm), as Dinomaly uses them.

    Args:
        name: variant name (see :data:`ENCODER_VARIANTS`), e.g. ``"dinov2reg_vit_base_14"``.
        pretrained: download the published weights through timm (Hugging Face hub).
        weights: a local weights file (timm/Hugging Face safetensors or Meta's ``dinov2_vit*14*_pretrain.pth``);
            used instead of a download.
        embed_dim, depth, num_heads, num_register_tokens: override the variant's architecture
            (small random encoders for tests, or official checkpoints of another size).
        pos_grid: side of the stored position-embedding grid (37 for DINOv2).
        interpolate_offset: DINOv2's position-embedding interpolation offset.
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        pretrained: bool = False,
        weights: str | Path | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        num_register_tokens: int | None = None,
        pos_grid: int = PRETRAINING_GRID,
        interpolate_offset: float = INTERPOLATE_OFFSET,
    ) -> None:
        super().__init__()
        self.variant = resolve_variant(name)
        self.name = name
        if embed_dim or num_heads:
            width, heads = embed_dim or self.variant.embed_dim, num_heads or self.variant.num_heads
            if width % heads:
                msg = f"embed_dim {width} is not divisible by num_heads {heads}."
                raise ValueError(msg)
        # Only the overrides: timm's model name fixes everything else.
        overrides = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}
        overrides = {key: value for key, value in overrides.items() if value}
        if num_register_tokens is not None:
            overrides |= {"reg_tokens": num_register_tokens, "no_embed_class": num_register_tokens > 0}
        self.vit: VisionTransformer = timm.create_model(
            self.variant.timm_name.split(".")[0],
            pretrained=False,
            img_size=pos_grid * self.variant.patch_size,
            dynamic_img_size=True,
            num_classes=0,
            **overrides,
        )
        self.pos_grid = pos_grid
        self.interpolate_offset = interpolate_offset
        if weights is not None:
            self.load_pretrained(load_weights_file(weights), source=str(weights))
        elif pretrained:
            self._download_pretrained()
        self.requires_grad_(False)

    @property
    def num_register_tokens(self) -> int:
        """Register tokens (0 or 4 for the published models)."""
        return self.vit.num_reg_tokens

    def _drop_blocks_after(self, count: int) -> None:
        self.vit.prune_intermediate_layers(indices=[count - 1], prune_norm=True)

    def load_pretrained(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        """Load timm-format or Meta-format DINOv2 weights strictly (the final norm may be absent)."""
        problem = ""
        try:
            converted = checkpoint_filter_fn(dict(state_dict), self.vit)
            missing, unexpected = self.vit.load_state_dict(converted, strict=False)
        except (RuntimeError, ValueError, KeyError) as error:
            problem = f"{type(error).__name__}: {str(error)[:300]}"
        else:
            missing = [key for key in missing if not key.startswith("norm.")]
            unexpected = [key for key in unexpected if not key.startswith(("head.", "fc_norm."))]
            if missing or unexpected:
                problem = (
                    f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                    f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                )
        if problem:
            msg = (
                f"Weights from {source} do not fit encoder {self.name!r} "
                f"(D={self.embed_dim}, depth={len(self.vit.blocks)}, registers={self.num_register_tokens}): "
                f"{problem}. Check that the file is the DINOv2 variant named by `encoder_name` "
                "(size, and with or without registers)."
            )
            raise PretrainedWeightsError(msg)
        logger.info("Loaded DINOv2 weights for %s from %s", self.name, source)

    def _download_pretrained(self) -> None:
        variant = self.variant
        try:
            reference = timm.create_model(
                variant.timm_name, pretrained=True, img_size=self.pos_grid * self.patch_size, num_classes=0
            )
        except Exception as error:
            msg = (
                f"Could not get the pretrained DINOv2 weights for encoder {self.name!r} "
                f"({type(error).__name__}: {str(error)[:200]}).\n"
                f"  They come from the Hugging Face hub ({variant.hub_url}, file model.safetensors) "
                f"or from Meta ({variant.meta_url}).\n"
                f"{WEIGHTS_DOWNLOAD_HINT}"
            )
            raise PretrainedWeightsError(msg) from error
        self.load_pretrained(reference.state_dict(), source=variant.hub_url)

    def patch_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """(h, w) patch grid of a (B, 3, H, W) batch; H and W must be multiples of 14."""
        height, width = images.shape[-2:]
        patch = self.patch_size
        if height % patch or width % patch:
            msg = (
                f"Input size {height}x{width} is not a multiple of the patch size {patch}. "
                "Use a crop/resize that is, e.g. 392 (= 28 x 14) or 448 (= 32 x 14)."
            )
            raise ValueError(msg)
        return height // patch, width // patch

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-embed and add position embeddings: ``[CLS, registers, patches]``.

        Args:
            images: (B, 3, H, W), H and W multiples of 14.

        Returns:
            (B, 1 + R + h*w, D) tokens; registers carry no position embedding, as in DINOv2.
        """
        grid = self.patch_grid(images)
        patches = self.vit.patch_embed(images).flatten(1, 2)  # (B, h*w, D): timm returns NHWC here
        pos_embed = self.vit.pos_embed
        cls_token = self.vit.cls_token
        if not self.vit.no_embed_class:
            cls_token = cls_token + pos_embed[:, :1]
            pos_embed = pos_embed[:, 1:]
        pos = interpolate_pos_embed(pos_embed, (self.pos_grid, self.pos_grid), grid, self.interpolate_offset)
        return self._prepend_prefix_tokens(cls_token, patches + pos)

    def forward(self, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Raw outputs of the requested blocks.

        Args:
            images: (B, 3, H, W) normalised images, H and W multiples of 14.
            layers: block indices, ascending.

        Returns:
            One (B, 1 + R + h*w, D) tensor per requested layer.
        """
        x = self.prepare_tokens(images)
        wanted = set(layers)
        outputs = []
        for index, block in enumerate(self.vit.blocks[: max(layers) + 1]):
            x = block(x)
            if index in wanted:
                outputs.append(x)
        return outputs

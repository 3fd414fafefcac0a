"""DinomalyModel: frozen encoder -> noisy bottleneck -> linear-attention decoder -> fused layer groups.

The model is composed from parts, as the official ``ViTill(encoder, bottleneck, decoder, ...)`` is: an encoder,
a bottleneck, a decoder, the head that turns each fused encoder group into the features to reconstruct, and the
anomaly-map generator. :class:`Dinomaly2Model` is the same model built from Dinomaly2's parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_dinomaly.anomaly_map import AnomalyMapGenerator, AnomalyMaps
from anomalib_dinomaly.encoder import DinoV2Encoder
from anomalib_dinomaly.layers import (
    ATTENTION_EPS,
    COMPRESSED_DIM,
    DECODER_NORM_EPS,
    DINOMALY2_ATTENTION_EPS,
    DINOMALY2_BOTTLENECK_DROPOUT,
    RECENTERING_EPS,
    CompressedNoisyBottleneck,
    ContextAwareRecentering,
    DecoderBlock,
    NoisyBottleneck,
    PatchTokens,
)

DEFAULT_GROUPS: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3), (4, 5, 6, 7))
BOTTLENECK_KINDS = ("mlp", "compressed")  # Dinomaly's two-layer MLP, Dinomaly2's three-layer one


def build_bottleneck(
    kind: str,
    dim: int,
    dropout: float,
    mlp_ratio: float = 4.0,
    compressed_dim: int = COMPRESSED_DIM,
    hidden_dim: int | None = None,
) -> nn.Module:
    """A noisy bottleneck for tokens of width ``dim``: ``"mlp"`` (Dinomaly) or ``"compressed"`` (Dinomaly2).

    The MLP's hidden width is ``hidden_dim``, or ``int(dim * mlp_ratio)`` when not given.

    Raises:
        ValueError: an unknown ``kind``.
    """
    hidden_dim = hidden_dim or int(dim * mlp_ratio)
    if kind == "mlp":
        return NoisyBottleneck(dim, hidden_dim, dropout)
    if kind == "compressed":
        return CompressedNoisyBottleneck(dim, compressed_dim, hidden_dim, dropout)
    msg = f"Unknown bottleneck kind {kind!r}; choose one of {BOTTLENECK_KINDS}."
    raise ValueError(msg)


def build_decoder(
    dim: int,
    num_heads: int,
    depth: int = 8,
    mlp_ratio: float = 4.0,
    norm_eps: float = DECODER_NORM_EPS,
    attention_eps: float = ATTENTION_EPS,
) -> nn.ModuleList:
    """``depth`` linear-attention decoder blocks of width ``dim``.

    Raises:
        ValueError: ``depth`` < 1.
    """
    if depth < 1:
        msg = f"decoder_depth must be at least 1, got {depth}."
        raise ValueError(msg)
    return nn.ModuleList(
        [
            DecoderBlock(dim, num_heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps, attention_eps=attention_eps)
            for _ in range(depth)
        ],
    )


def validate_groups(groups: Sequence[Sequence[int]], count: int, what: str) -> list[list[int]]:
    """Check that layer groups index ``count`` layers; returns them as lists.

    Raises:
        ValueError: an empty group, or an index outside ``[0, count)``.
    """
    groups = [list(group) for group in groups]
    if not groups or any(not group for group in groups):
        msg = f"{what} must be a non-empty list of non-empty groups, got {groups}."
        raise ValueError(msg)
    bad = [index for group in groups for index in group if not 0 <= index < count]
    if bad:
        msg = f"{what} {groups} refers to layers {bad}, but only indices 0..{count - 1} exist."
        raise ValueError(msg)
    return groups


def check_finite(images: torch.Tensor) -> None:
    """Refuse a (B, C, H, W) batch holding NaN or Inf: it would give NaN maps and scores without any error.

    Skipped while tracing or exporting, where a data-dependent check cannot be recorded.

    Raises:
        ValueError: naming how many values are bad and in which images of the batch.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return
    bad = ~torch.isfinite(images)
    if bool(bad.any()):
        images_hit = bad.flatten(1).any(dim=1).nonzero().flatten().tolist()
        msg = (
            f"The input batch {tuple(images.shape)} contains {int(bad.sum())} NaN/Inf values "
            f"(images {images_hit} of the batch). Dinomaly would turn them into NaN anomaly maps and scores. "
            "Check the image files and any custom transform or normalisation that produced this batch."
        )
        raise ValueError(msg)


def fuse_groups(layers: Sequence[torch.Tensor], groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Mean of the listed layers per group: G tensors (B, N, D) from a list of (B, N, D)."""
    return [torch.stack([layers[index] for index in group], dim=1).mean(dim=1) for group in groups]


class DinomalyModel(nn.Module):
    """The Dinomaly network (Guo et al., CVPR 2025), composed from its parts.

    Args:
        encoder: frozen encoder (DINOv2 or DINOv3); blocks after the last target layer are dropped.
        target_layers: encoder blocks whose outputs are reconstructed (ViT-S/B: 2..9; ViT-L: 4, 6, ..., 18).
        fuse_layer_encoder: groups of indices into ``target_layers``, averaged into the encoder maps.
        fuse_layer_decoder: groups of indices into the decoder outputs, taken in reverse order
            (index 0 = the last decoder block), averaged into the decoder maps.
        decoder_depth: number of linear-attention decoder blocks (8), when ``decoder`` is not given.
        bottleneck_dropout: dropout of the noisy bottleneck (0.2; 0.4 for Real-IAD), when ``bottleneck`` is not given.
        mlp_ratio: hidden width of bottleneck and decoder MLPs relative to D (4).
        anomaly_map_generator: map and score computation; the paper's evaluation by default.
        bottleneck: the bottleneck, (B, N, D) -> (B, N, D); Dinomaly's :class:`NoisyBottleneck` by default.
        decoder: the decoder blocks, each (B, N, D) -> (B, N, D); Dinomaly's linear-attention blocks by default.
        encoder_group_head: turns a fused encoder group (B, prefix + N, D) into the (B, N, D) features to
            reconstruct, given the number of prefix tokens; :class:`PatchTokens` (Dinomaly) by default,
            :class:`ContextAwareRecentering` in Dinomaly2.
        fuse_layer_bottleneck: indices into ``target_layers`` averaged into the bottleneck input; all by default.
    """

    def __init__(
        self,
        encoder: nn.Module,
        target_layers: Sequence[int] | None = None,
        fuse_layer_encoder: Sequence[Sequence[int]] = DEFAULT_GROUPS,
        fuse_layer_decoder: Sequence[Sequence[int]] = DEFAULT_GROUPS,
        decoder_depth: int = 8,
        bottleneck_dropout: float = 0.2,
        mlp_ratio: float = 4.0,
        anomaly_map_generator: AnomalyMapGenerator | None = None,
        bottleneck: nn.Module | None = None,
        decoder: Sequence[nn.Module] | None = None,
        encoder_group_head: nn.Module | None = None,
        fuse_layer_bottleneck: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        target_layers = list(encoder.variant.target_layers if target_layers is None else target_layers)
        if not target_layers or target_layers != sorted(set(target_layers)) or target_layers[0] < 0:
            msg = f"target_layers must be distinct, ascending, non-negative block indices, got {target_layers}."
            raise ValueError(msg)
        if target_layers[-1] >= encoder.depth:
            msg = f"target_layers {target_layers} exceed the encoder's {encoder.depth} blocks."
            raise ValueError(msg)
        dim = encoder.embed_dim
        if decoder is None:
            decoder = build_decoder(dim, encoder.num_heads, decoder_depth, mlp_ratio)
        self.decoder = decoder if isinstance(decoder, nn.ModuleList) else nn.ModuleList(decoder)
        self.fuse_layer_encoder = validate_groups(fuse_layer_encoder, len(target_layers), "fuse_layer_encoder")
        self.fuse_layer_decoder = validate_groups(fuse_layer_decoder, len(self.decoder), "fuse_layer_decoder")
        if len(self.fuse_layer_encoder) != len(self.fuse_layer_decoder):
            msg = (
                f"fuse_layer_encoder has {len(self.fuse_layer_encoder)} groups but fuse_layer_decoder has "
                f"{len(self.fuse_layer_decoder)}; each encoder group needs one decoder group."
            )
            raise ValueError(msg)
        all_layers = list(range(len(target_layers)))
        self.fuse_layer_bottleneck = validate_groups(
            [all_layers if fuse_layer_bottleneck is None else fuse_layer_bottleneck], len(target_layers), "fuse_layer_bottleneck"
        )[0]
        self.target_layers = target_layers

        encoder.keep_blocks(target_layers[-1] + 1)
        self.encoder = encoder
        self.bottleneck = bottleneck or build_bottleneck("mlp", dim, bottleneck_dropout, mlp_ratio)
        self.encoder_group_head = encoder_group_head or PatchTokens()
        self.anomaly_map_generator = anomaly_map_generator or AnomalyMapGenerator()
        self.init_trainable_weights()

    def init_trainable_weights(self) -> None:
        """Official init of bottleneck and decoder: Linear trunc-normal std 0.01 in [-0.03, 0.03], bias 0; LayerNorm 1/0."""
        for module in [*self.bottleneck.modules(), *self.decoder.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def to_three_channels(images: torch.Tensor) -> torch.Tensor:
        """Accept (B, 1, H, W) greyscale and (B, 4, H, W) RGBA; return (B, 3, H, W)."""
        if images.ndim != 4:
            msg = f"Expected a (B, C, H, W) image batch, got a tensor of shape {tuple(images.shape)}."
            raise ValueError(msg)
        channels = images.shape[1]
        if channels == 3:
            return images
        if channels == 1:
            return images.expand(-1, 3, -1, -1)
        if channels == 4:
            return images[:, :3]
        msg = f"Expected 1 (greyscale), 3 (RGB) or 4 (RGBA) channels, got {channels} (shape {tuple(images.shape)})."
        raise ValueError(msg)

    def encode_decode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Fused encoder and decoder groups, as the official ``ViTill.forward`` returns them.

        Args:
            images: (B, 3, H, W) normalised images; H and W multiples of the encoder's patch size P.

        Returns:
            ``(encoder_groups, decoder_groups)``: G tensors each, (B, D, H/P, W/P); the encoder groups have passed
            through ``encoder_group_head``.
        """
        images = self.to_three_channels(images)
        check_finite(images)
        height, width = self.encoder.patch_grid(images)
        with torch.no_grad():
            encoder_layers = self.encoder(images, self.target_layers)
        # stack + mean, not a running sum: about 15 % faster in torch eager here (glibc), as freeing the large
        # stacked buffer raises malloc's mmap threshold, so later activations stop page-faulting.
        x = self.bottleneck(torch.stack([encoder_layers[i] for i in self.fuse_layer_bottleneck], dim=1).mean(dim=1))
        decoder_layers = []
        for block in self.decoder:
            x = block(x)
            decoder_layers.append(x)
        decoder_layers.reverse()

        prefix = self.encoder.num_prefix_tokens

        def to_maps(patches: list[torch.Tensor]) -> list[torch.Tensor]:
            return [g.transpose(1, 2).reshape(g.shape[0], -1, height, width) for g in patches]

        encoder_groups = [self.encoder_group_head(g, prefix) for g in fuse_groups(encoder_layers, self.fuse_layer_encoder)]
        decoder_groups = [g[:, prefix:] for g in fuse_groups(decoder_layers, self.fuse_layer_decoder)]
        return to_maps(encoder_groups), to_maps(decoder_groups)

    def anomaly_maps(self, images: torch.Tensor) -> AnomalyMaps:
        """Every stage of the anomaly map (see :class:`AnomalyMaps`) for (B, C, H, W) normalised images."""
        encoder_groups, decoder_groups = self.encode_decode(images)
        return self.anomaly_map_generator.compute(encoder_groups, decoder_groups, tuple(images.shape[-2:]))

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Training: the fused groups for the loss. Evaluation: ``InferenceBatch(pred_score, anomaly_map)``.

        Args:
            images: (B, C, H, W) normalised images, C in {1, 3, 4}.

        Returns:
            In training mode ``(encoder_groups, decoder_groups)``; in eval mode an ``InferenceBatch`` with
            ``pred_score`` (B,) and ``anomaly_map`` (B, 1, H, W).
        """
        encoder_groups, decoder_groups = self.encode_decode(images)
        if self.training:
            return encoder_groups, decoder_groups
        anomaly_map, pred_score = self.anomaly_map_generator(encoder_groups, decoder_groups, tuple(images.shape[-2:]))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)


class Dinomaly2Model(DinomalyModel):
    """Dinomaly2 ("One Dinomaly2 Detect Them All", Guo et al.): Dinomaly built from Dinomaly2's parts.

    Its defaults are the preview code's (``dinomaly_2D.py``): context-aware recentering of the encoder groups,
    the three-layer bottleneck with dropout 0.4, linear attention with eps 1e-8. Each can be switched back to
    Dinomaly's part for ablations.

    Args:
        encoder, target_layers, fuse_layer_encoder, fuse_layer_decoder, decoder_depth, mlp_ratio,
            anomaly_map_generator, fuse_layer_bottleneck: as :class:`DinomalyModel`.
        bottleneck_dropout: dropout after each bottleneck Linear (0.4).
        bottleneck_kind: ``"compressed"`` (Dinomaly2's three layers) or ``"mlp"`` (Dinomaly's).
        compressed_dim: width of the compressed bottleneck's first layer (256).
        context_recentering: recentre and normalise the encoder groups (on); off = Dinomaly's patch tokens.
        recentering_eps: eps of the recentering's LayerNorm (1e-8).
        attention_eps: linear-attention eps (1e-8).
        decoder_norm_eps: decoder LayerNorm eps (1e-8).
    """

    def __init__(
        self,
        encoder: nn.Module,
        target_layers: Sequence[int] | None = None,
        fuse_layer_encoder: Sequence[Sequence[int]] = DEFAULT_GROUPS,
        fuse_layer_decoder: Sequence[Sequence[int]] = DEFAULT_GROUPS,
        decoder_depth: int = 8,
        bottleneck_dropout: float = DINOMALY2_BOTTLENECK_DROPOUT,
        mlp_ratio: float = 4.0,
        anomaly_map_generator: AnomalyMapGenerator | None = None,
        fuse_layer_bottleneck: Sequence[int] | None = None,
        bottleneck_kind: str = "compressed",
        compressed_dim: int = COMPRESSED_DIM,
        context_recentering: bool = True,
        recentering_eps: float = RECENTERING_EPS,
        attention_eps: float = DINOMALY2_ATTENTION_EPS,
        decoder_norm_eps: float = DECODER_NORM_EPS,
    ) -> None:
        dim = encoder.embed_dim
        super().__init__(
            encoder,
            target_layers=target_layers,
            fuse_layer_encoder=fuse_layer_encoder,
            fuse_layer_decoder=fuse_layer_decoder,
            anomaly_map_generator=anomaly_map_generator,
            bottleneck=build_bottleneck(bottleneck_kind, dim, bottleneck_dropout, mlp_ratio, compressed_dim),
            decoder=build_decoder(dim, encoder.num_heads, decoder_depth, mlp_ratio, decoder_norm_eps, attention_eps),
            encoder_group_head=ContextAwareRecentering(recentering_eps) if context_recentering else PatchTokens(),
            fuse_layer_bottleneck=fuse_layer_bottleneck,
        )

"""Dinomaly's and Dinomaly2's layers: noisy bottlenecks, linear attention, the decoder block, and the heads that
turn fused encoder groups into the patch features the decoder must reconstruct."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F  # noqa: N812
from timm.layers import Mlp
from torch import nn

DECODER_NORM_EPS = 1e-8  # official decoder LayerNorm eps; the bottleneck output is small (~0.04), so it matters
ATTENTION_EPS = 1e-6  # not in the official code, whose normaliser can underflow to 0 and give NaN
DINOMALY2_ATTENTION_EPS = 1e-8  # Dinomaly2's LinearAttention2(eps=1e-8)
DINOMALY2_BOTTLENECK_DROPOUT = 0.4  # Dinomaly2's, for every data set
COMPRESSED_DIM = 256  # width of Dinomaly2's first bottleneck layer
RECENTERING_EPS = 1e-8  # eps of Dinomaly2's affine-free LayerNorm after recentering


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` as ``exp(min(x, 0)) + relu(x)``: the same values (to 1 ulp) and gradient (except at exactly
    x = 0), about 10x faster than ``F.elu`` on CPU in torch 2.14, and plain Exp/Relu ops in ONNX and OpenVINO.

    Args:
        x: any shape.

    Returns:
        Same shape, values in (0, inf).
    """
    return torch.exp(x.clamp(max=0.0)) + F.relu(x)


def _elu_plus_one_for_training(x: torch.Tensor) -> torch.Tensor:
    """``F.elu(x) + 1``: slower than :func:`elu_plus_one` but saves a third of its activations for backward."""
    return F.elu(x) + 1.0


class NoisyBottleneck(nn.Module):
    """MLP whose dropout is the noise: ``drop -> fc1 -> GELU -> drop -> fc2 -> drop``.

    timm's ``Mlp`` has no dropout on its input, which Dinomaly's ``bMlp`` has; hence this class.

    Args:
        dim: token width D.
        hidden_dim: width of the hidden layer (4 * D in Dinomaly).
        dropout: dropout probability, used at all three places (0.2; 0.4 for Real-IAD).
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            msg = f"bottleneck dropout must be in [0, 1), got {dropout}."
            raise ValueError(msg)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    @property
    def first_layer(self) -> nn.Linear:
        """The Linear the input meets first."""
        return self.fc1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = self.act(self.fc1(self.drop(x)))
        return self.drop(self.fc2(self.drop(x)))


class CompressedNoisyBottleneck(nn.Module):
    """Dinomaly2's three-layer noisy bottleneck: ``compress -> drop -> fc1 -> GELU -> drop -> fc2 -> drop``.

    The first Linear narrows the tokens to ``compressed_dim`` (256) with no activation after it, and the input is
    not dropped (Dinomaly's :class:`NoisyBottleneck` drops it); Dinomaly2 trains ``compress`` at a tenth of the
    learning rate (see :attr:`first_layer`).

    Args:
        dim: token width D.
        compressed_dim: width after the first Linear (256).
        hidden_dim: width of the MLP's hidden layer (4 * D).
        dropout: dropout probability after each of the three Linears (0.4).
    """

    def __init__(
        self,
        dim: int,
        compressed_dim: int = COMPRESSED_DIM,
        hidden_dim: int | None = None,
        dropout: float = DINOMALY2_BOTTLENECK_DROPOUT,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            msg = f"bottleneck dropout must be in [0, 1), got {dropout}."
            raise ValueError(msg)
        if compressed_dim < 1:
            msg = f"compressed_dim must be positive, got {compressed_dim}."
            raise ValueError(msg)
        self.compress = nn.Linear(dim, compressed_dim)
        self.fc1 = nn.Linear(compressed_dim, hidden_dim or 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.fc1.out_features, dim)
        self.drop = nn.Dropout(dropout)

    @property
    def first_layer(self) -> nn.Linear:
        """The compressing Linear(D, 256), which Dinomaly2 trains at a lower learning rate."""
        return self.compress

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = self.drop(self.compress(x))
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class PatchTokens(nn.Module):
    """Dinomaly's encoder-group head: the patch tokens of a fused group, as they are."""

    def forward(self, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """(B, prefix + N, D) -> (B, N, D)."""
        return tokens[:, num_prefix_tokens:]


class ContextAwareRecentering(nn.Module):
    """Dinomaly2's encoder-group head: patch tokens minus the group's class token, then an affine-free LayerNorm.

    Subtracting the class token removes what all patches of an image share (the product's context), so one
    decoder serves many products; the LayerNorm puts every group on one scale. Applied to the fused (mean)
    encoder group, never to the decoder's output.

    Args:
        eps: LayerNorm epsilon (1e-8).
    """

    def __init__(self, eps: float = RECENTERING_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """(B, prefix + N, D) with the class token first -> (B, N, D)."""
        centred = tokens[:, num_prefix_tokens:] - tokens[:, :1]
        return F.layer_norm(centred, (centred.shape[-1],), eps=self.eps)


class LinearAttention(nn.Module):
    """Multi-head linear attention with feature map ``elu(x) + 1`` and a per-query normaliser.

    It cannot focus on a few tokens, so the decoder cannot copy an anomaly from its input to its
    output ("identity mapping"); that is why Dinomaly uses it.

    Args:
        dim: token width D.
        num_heads: attention heads (D must be divisible by it).
        qkv_bias: bias in the qkv projection.
        eps: added to the normaliser so it can never be 0.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, eps: float = ATTENTION_EPS) -> None:
        super().__init__()
        if dim % num_heads:
            msg = f"dim {dim} is not divisible by num_heads {num_heads}."
            raise ValueError(msg)
        self.num_heads = num_heads
        self.eps = eps
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, d)
        # The normaliser sums d * N positive terms (about 64 * 1029 = 66k for ViT-B at 448 px at initialisation):
        # past float16's maximum of 65504, so it is computed in float32 even under fp16/bf16 autocast.
        full_precision = (
            torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else nullcontext()
        )
        with full_precision:
            # Training: F.elu keeps one tensor for backward where the fast form keeps three (~1 GB at ViT-B, batch 8).
            feature_map = _elu_plus_one_for_training if self.training else elu_plus_one
            q, k = feature_map(q.float()), feature_map(k.float())
            kv = k.transpose(-2, -1) @ v.float()  # (B, heads, d, d): sum over tokens of k v^T
            normaliser = q @ k.sum(dim=-2).unsqueeze(-1)  # (B, heads, N, 1)
            out = (q @ kv) * (1.0 / (normaliser + self.eps))
        out = out.to(v.dtype)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block with linear attention; no LayerScale, dropout or drop-path.

    Args:
        dim: token width D.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP relative to D.
        qkv_bias: bias in the qkv projection.
        norm_eps: LayerNorm epsilon (official: 1e-8).
        attention_eps: added to the linear attention's normaliser (Dinomaly 1e-6, Dinomaly2 1e-8).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = DECODER_NORM_EPS,
        attention_eps: float = ATTENTION_EPS,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = LinearAttention(dim, num_heads, qkv_bias=qkv_bias, eps=attention_eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

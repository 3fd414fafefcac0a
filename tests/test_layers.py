"""Bottleneck, linear attention and decoder block against direct re-computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_dinomaly.layers import DecoderBlock, LinearAttention, NoisyBottleneck


def test_linear_attention_matches_its_definition():
    torch.manual_seed(0)
    attention = LinearAttention(dim=12, num_heads=3)
    x = torch.randn(2, 7, 12)
    q, k, v = attention.qkv(x).reshape(2, 7, 3, 3, 4).permute(2, 0, 3, 1, 4)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    expected = torch.zeros(2, 3, 7, 4)
    for b in range(2):
        for h in range(3):
            for s in range(7):
                weights = q[b, h, s] @ k[b, h].T  # (N,): un-normalised, no softmax
                expected[b, h, s] = (weights[:, None] * v[b, h]).sum(0) / (weights.sum() + attention.eps)
    expected = attention.proj(expected.transpose(1, 2).reshape(2, 7, 12))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_linear_attention_is_permutation_equivariant_and_finite_on_constant_input():
    torch.manual_seed(0)
    attention = LinearAttention(dim=8, num_heads=2)
    x = torch.randn(1, 5, 8)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(attention(x)[:, perm], attention(x[:, perm]), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        attention.qkv.weight.zero_()
        attention.qkv.bias.fill_(-200.0)  # elu+1 underflows to 0: the normaliser would be exactly 0
    assert torch.isfinite(attention(torch.zeros(1, 5, 8))).all()


def test_bottleneck_drops_input_hidden_and_output():
    bottleneck = NoisyBottleneck(dim=4, hidden_dim=16, dropout=0.5)
    calls = []
    bottleneck.drop.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    bottleneck.train()
    bottleneck(torch.ones(2, 3, 4))
    assert calls == [torch.Size([2, 3, 4]), torch.Size([2, 3, 16]), torch.Size([2, 3, 4])]
    bottleneck.eval()
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(bottleneck(x), bottleneck.fc2(F.gelu(bottleneck.fc1(x))))
    assert bottleneck.fc1.bias is not None and bottleneck.fc2.bias is not None


def test_bottleneck_rejects_bad_dropout():
    with pytest.raises(ValueError, match="dropout"):
        NoisyBottleneck(4, 16, dropout=1.0)


def test_decoder_block_is_pre_norm_residual():
    torch.manual_seed(0)
    block = DecoderBlock(dim=12, num_heads=3)
    assert block.norm1.eps == 1e-8 and block.norm2.eps == 1e-8
    assert not any("gamma" in name or "ls" in name.split(".")[0] for name, _ in block.named_parameters())
    x = torch.randn(2, 5, 12)
    y = x + block.attn(block.norm1(x))
    expected = y + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(block(x), expected)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        LinearAttention(dim=10, num_heads=3)


def test_linear_attention_training_and_inference_forms_agree():
    """Training uses F.elu (lean backward), inference exp/relu (fast, exports as Exp/Relu): same values and gradients."""
    torch.manual_seed(0)
    attention = LinearAttention(dim=24, num_heads=3)
    x = torch.randn(2, 7, 24) * 3
    results = []
    for training in (True, False):
        attention.train(training)
        attention.zero_grad()
        out = attention(x)
        out.square().sum().backward()
        results.append((out.detach(), attention.qkv.weight.grad.clone()))
    (train_out, train_grad), (eval_out, eval_grad) = results
    torch.testing.assert_close(train_out, eval_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(train_grad, eval_grad, rtol=1e-5, atol=1e-6)

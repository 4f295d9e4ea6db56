"""INP Extractor, Bottleneck and INP-guided decoder against the INP-Former code's blocks, init."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from filterformer.models import Bottleneck, INPExtractor, INPGuidedDecoder
from filterformer.models.inpformer.inp import INPAttention, INPGuidedBlock

DIM, HEADS = 32, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _perturb(module: nn.Module) -> None:
    """Give every parameter a visible random value (the official init is tiny, std 0.01)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def test_extractor_gives_m_inps_per_image_and_chains_blocks() -> None:
    extractor = INPExtractor(DIM, HEADS, num_inps=6, depth=2)
    tokens = torch.randn(3, 20, DIM)
    inps = extractor(tokens)
    assert inps.shape == (3, 6, DIM)
    inps.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extractor.parameters())


def test_extractor_block_is_pre_ln_softmax_cross_attention_with_one_shared_norm() -> None:
    extractor = INPExtractor(DIM, HEADS, num_inps=3, depth=1)
    _perturb(extractor)
    block = extractor.blocks[0]
    tokens = torch.randn(2, 10, DIM)
    t = extractor.queries.expand(2, -1, -1)
    q_in, kv_in = block.norm1(t), block.norm1(tokens)
    q = block.attn.q(q_in).reshape(2, 3, HEADS, -1).transpose(1, 2)
    k, v = (x.reshape(2, 10, HEADS, -1).transpose(1, 2) for x in block.attn.kv(kv_in).chunk(2, -1))
    weights = torch.softmax(q @ k.transpose(-2, -1) / (DIM // HEADS) ** 0.5, dim=-1)
    t = t + block.attn.proj((weights @ v).transpose(1, 2).reshape(2, 3, DIM))
    expected = t + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(t))))
    torch.testing.assert_close(extractor(tokens), expected)
    assert sum(isinstance(m, nn.LayerNorm) for m in block.modules()) == 2


def test_inp_attention_is_relu_of_scaled_cosine_without_softmax() -> None:
    attn = INPAttention(DIM, HEADS)
    _perturb(attn)
    tokens, inps = torch.randn(2, 7, DIM), torch.randn(2, 5, DIM)
    q = F.normalize(attn.q(tokens).reshape(2, 7, HEADS, -1).transpose(1, 2), dim=-1)
    k, v = (x.reshape(2, 5, HEADS, -1).transpose(1, 2) for x in attn.kv(inps).chunk(2, -1))
    weights = torch.clamp(attn.scale * q @ F.normalize(k, dim=-1).transpose(-2, -1), min=0)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, DIM))
    torch.testing.assert_close(attn(tokens, inps), expected)


def test_guided_block_has_no_attention_residual() -> None:
    """LN removes a constant channel offset, so without a residual the offset vanishes."""
    block = INPGuidedBlock(DIM, HEADS, mlp_ratio=4, ln_eps=1e-8)
    _perturb(block)
    tokens, inps = torch.randn(2, 7, DIM), torch.randn(2, 5, DIM)
    torch.testing.assert_close(block(tokens + 5.0, inps), block(tokens, inps))
    y = block.attn(block.norm1(tokens), block.norm1(inps))
    torch.testing.assert_close(block(tokens, inps), y + block.mlp(block.norm2(y)))


def test_decoder_returns_every_block_output() -> None:
    decoder = INPGuidedDecoder(DIM, HEADS, depth=8)
    tokens, inps = torch.randn(2, 12, DIM), torch.randn(2, 6, DIM)
    outputs = decoder(tokens, inps)
    assert len(outputs) == 8 and all(o.shape == (2, 12, DIM) for o in outputs)
    torch.testing.assert_close(outputs[1], decoder.blocks[1](outputs[0], inps))


def test_bottleneck_is_linear_gelu_linear_without_residual() -> None:
    bottleneck = Bottleneck(DIM, mlp_ratio=4)
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(bottleneck(x), bottleneck.fc2(F.gelu(bottleneck.fc1(x))))
    assert bottleneck.fc1.out_features == 4 * DIM
    assert sum(p.numel() for p in bottleneck.parameters()) == 2 * DIM * 4 * DIM + 5 * DIM


def test_init_follows_the_spec() -> None:
    modules = [INPExtractor(128, 8), Bottleneck(128), INPGuidedDecoder(128, 8, depth=1)]
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                assert m.weight.abs().max() <= 0.03 and m.bias.abs().max() == 0
                assert 0.008 < m.weight.std() < 0.011  # trunc-normal std 0.01 clipped at 3 sigma
            if isinstance(m, nn.LayerNorm):
                assert (m.weight == 1).all() and (m.bias == 0).all()
    queries = modules[0].queries
    assert queries.shape == (6, 128) and 0.9 < queries.std() < 1.1 and abs(queries.mean()) < 0.1
    assert all((b.attn.scale == 1).all() for b in modules[2].blocks)
    assert modules[2].blocks[0].attn.scale.shape == (8, 1, 1)

"""Model pieces: layer freezing by exact name segments, the NRCCR attention block, pooling, mapping, heads."""
import pytest
import torch

from ccr_fast.models import (FusionEncoder, ITMHead, LanguageDiscriminator, LatentMapping, MLMHead, NRCCRTextHead,
                             TextBackbone, freeze_encoder, tiny_text_encoder)
from ccr_fast.models.text import HeadAttention, masked_mean


def test_freeze_matches_exact_layer_segments():
    enc = tiny_text_encoder(50, hidden=8, layers=12, heads=2)
    names = freeze_encoder(enc, ["layer.1"])
    assert names and all(".layer.1." in n for n in names)
    assert not any(".layer.10." in n or ".layer.11." in n for n in names)
    assert not any(p.requires_grad for n, p in enc.named_parameters() if "embeddings" in n)
    freeze_encoder(enc, [10, 11])
    on = {n.split(".")[2] for n, p in enc.named_parameters() if p.requires_grad}
    assert on == {"10", "11"}
    freeze_encoder(enc, [])
    assert not any(p.requires_grad for p in enc.parameters())
    with pytest.raises(ValueError, match="trainable_layers"):
        freeze_encoder(enc, ["encoder"])


def test_attention_residual_only_in_self_mode():
    att = HeadAttention(16, heads=4, qk_dim=8, dropout=0.0).eval()
    torch.nn.init.zeros_(att.dense.weight)
    torch.nn.init.zeros_(att.dense.bias)
    x, m = torch.randn(2, 5, 16), torch.ones(2, 5)
    ln = torch.nn.functional.layer_norm(x, (16,), att.norm.weight, att.norm.bias, att.norm.eps)
    torch.testing.assert_close(att(x, m), ln)  # self: LN(0 + x)
    out = att(x, m, torch.randn(2, 3, 16), torch.ones(2, 3))
    torch.testing.assert_close(out, torch.zeros_like(out))  # cross: LN(0), no residual


def test_attention_scale_and_mask():
    att = HeadAttention(16, heads=4, qk_dim=8, dropout=0.0).eval()
    x, m = torch.randn(1, 4, 16), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    q = att.q(x).view(1, 4, 4, 2).transpose(1, 2)
    k = att.k(x).view(1, 4, 4, 2).transpose(1, 2)
    v = att.v(x).view(1, 4, 4, 4).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / (16 / 4) ** 0.5
    s = s + (1 - m.view(1, 1, 1, 4) * m.view(1, 1, 4, 1)) * -10000.0
    ref = att.norm(att.dense((s.softmax(-1) @ v).transpose(1, 2).reshape(1, 4, 16)) + x)
    torch.testing.assert_close(att(x, m), ref)


def test_pooling_masked_vs_official():
    x = torch.randn(2, 6, 8)
    m = torch.tensor([[1.0] * 6, [1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(masked_mean(x, m)[1], x[1, :3].mean(0))
    torch.testing.assert_close(masked_mean(x, None)[1], x[1].mean(0))
    head = NRCCRTextHead(8, 16, heads=4, qk_dim=8, dropout=0.0, masked_pool=True).eval()
    p_short, _ = head.encode(x[1:, :3], m[1:, :3])
    p_long, _ = head.encode(x[1:], m[1:])
    torch.testing.assert_close(p_short, p_long)  # masked pooling ignores padding length
    t = head.teacher(*head.encode(x, m)[1:], m, head.tokens(x), m) if False else None
    xs = head.tokens(x)
    assert head.teacher(xs, m, xs, m).shape == (2, 16)


def test_mapping_and_heads():
    mp = LatentMapping(8, 12)
    assert torch.count_nonzero(mp.linear.bias) == 0
    y = mp(torch.randn(5, 8))
    torch.testing.assert_close(y.norm(dim=1), torch.ones(5))
    for kind in ("weak", "not-so-weak", "strong"):
        assert LanguageDiscriminator(8, kind)(torch.randn(3, 4, 8)).shape == (3, 2)
    with pytest.raises(ValueError, match="disc_type"):
        LanguageDiscriminator(8, "huge")
    assert ITMHead(8)(torch.randn(3, 8)).shape == (3, 2)
    assert MLMHead(8, 30)(torch.randn(3, 4, 8)).shape == (3, 4, 30)
    fu = FusionEncoder(8, 6, width=16, layers=1, heads=2)
    assert fu(torch.randn(3, 4, 8), torch.ones(3, 4), torch.randn(3, 6)).shape == (3, 4, 16)


def test_text_cache_equals_uncached():
    enc = tiny_text_encoder(50, hidden=8, layers=1, heads=2).eval()
    freeze_encoder(enc, [])
    bb = TextBackbone(enc, cache=True)
    ids = torch.tensor([[0, 5, 6, 2, 1], [0, 7, 2, 1, 1]])
    mask = (ids != 1).long()
    ref = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    out1, out2 = bb(ids, mask), bb(ids, mask)
    for i, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(out1[i, :n], ref[i, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out1, out2)
    assert len(bb._cache) == 2


@pytest.mark.parametrize("top", [1, 2])
def test_text_prefix_cache_runs_only_the_trained_top_layers(top):
    """With only the top layers trainable, the cache holds the input states of the lowest trained layer: outputs
    equal the full encoder's, gradients reach exactly the trained layers, and a changed split clears the cache."""
    torch.manual_seed(0)
    enc = tiny_text_encoder(50, hidden=8, layers=3, heads=2, dropout=0.0).eval()
    freeze_encoder(enc, list(range(3 - top, 3)))
    bb = TextBackbone(enc, cache=True)
    assert bb.frozen_prefix() == 3 - top
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 8, 9, 11, 2], [0, 2, 1, 1, 1, 1]])
    mask = (ids != 1).long()
    ref = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    out = bb(ids, mask)
    assert out.shape == ref.shape
    for i, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(out[i, :n], ref[i, :n], atol=1e-5, rtol=1e-5)
        assert not out[i, n:].any()
    assert len(bb._cache) == 3 and bb._cache_at == 3 - top
    masked_mean(out, mask).pow(2).sum().backward()
    got = {n.split(".")[2] for n, p in enc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == {str(i) for i in range(3 - top, 3)}
    freeze_encoder(enc, [])  # fully frozen now: the cache switches to final states
    torch.testing.assert_close(bb(ids, mask), out.detach(), atol=1e-5, rtol=1e-5)
    assert bb._cache_at is None


def test_text_prefix_cache_off_when_a_lower_part_trains():
    enc = tiny_text_encoder(50, hidden=8, layers=3, heads=2)
    freeze_encoder(enc, [0, 2])  # not a contiguous top block
    assert TextBackbone(enc, cache=True).frozen_prefix() == 0
    freeze_encoder(enc, None)  # everything, embeddings included
    assert TextBackbone(enc, cache=True).frozen_prefix() == 0


def test_norm_linear_visual_standardises_with_running_stats_in_eval():
    from ccr_fast.models.visual import build_visual

    torch.manual_seed(0)
    vis = build_visual("norm_linear", 6, 4, dropout=0.0)
    x = torch.randn(64, 6) * torch.arange(1, 7) + 5
    vis.train()
    y = vis(x)
    z = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y, vis.linear(z), atol=1e-5, rtol=1e-5)
    vis.eval()
    rm, rv = vis.norm.running_mean, vis.norm.running_var
    torch.testing.assert_close(vis(x[:3]), vis.linear((x[:3] - rm) / torch.sqrt(rv + 1e-5)), atol=1e-5, rtol=1e-5)
    assert vis(x.view(8, 8, 6)).shape == (8, 4)  # token grids are pooled first
    vis.train()
    with pytest.raises(ValueError, match="at least 2"):
        vis(x[:1])

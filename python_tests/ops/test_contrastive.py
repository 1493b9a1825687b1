"""Contrastive op family (CLIP / 1-to-K / local loss) and ccr_fast.losses vs float64 dense references.

Covers: the kernel contract (forward outputs and backward with arbitrary coefficients, forced small tiles), the
public losses on random and edge shapes for the "cpu" and "torch" backends, fp16/bf16 and non-contiguous inputs,
logit_scale up to 100, gradcheck in fp64 (incl. the scale), K=1 ≡ CLIP, the closed-form 1-to-K gradient, both
t2i divisors, a hypothesis property, the documented errors, autocast, torch.compile(fullgraph) and opcheck.
fp32 results are held to the flash-attention criterion: error ≤ 2× that of plain fp32 torch (+ a small floor).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from _contrastive_ref import assert_close_fa, clip_ref, general_ref, one_to_k_ref
from ccr_fast import losses
from ccr_fast.backends.cpu import contrastive as CPU
from ccr_fast.ops import contrastive as C

from _backends import BACKENDS  # noqa: E402


def _feats(n, d, dtype=torch.float32, requires_grad=True):
    t = F.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).to(dtype)
    return t.requires_grad_(requires_grad)


def _close(a, b, **kw):
    """assert_close after casting both sides to float64 (dtypes are asserted separately where they matter)."""
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(), **kw)


def _grads(fn, *tensors):
    for t in tensors:
        t.grad = None
    loss = fn(*tensors)
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in tensors]


# ---------------------------------------------------------------------------------------------------------------
# Kernel contract
# ---------------------------------------------------------------------------------------------------------------

CONTRACT_CASES = [
    # M, N, d, offsets (row_off, row_div, col_off, col_div)
    (5, 5, 3, (0, 1, 0, 1)),
    (4, 12, 7, (0, 1, 0, 3)),  # 1-to-K, K=3
    (3, 9, 5, (3, 1, 0, 1)),  # local loss, rank 1 of 3 (b=3)
    (6, 4, 2, (4, 2, 0, 1)),  # texts-as-rows of 1-to-K, rank 1
    (11, 13, 9, (1, 3, 2, 4)),  # general rule; some rows/cols have no positive
]


@pytest.mark.parametrize("M,N,d,offs", CONTRACT_CASES)
@pytest.mark.parametrize("tiles", [(0, 0), (2, 3), (1, 1)])
def test_cpu_forward_contract(M, N, d, offs, tiles):
    x, y = torch.randn(M, d), torch.randn(N, d)
    scale = torch.tensor(3.0)
    out = CPU.contrastive_forward(x, y, scale, *offs, True, tile_m=tiles[0], tile_n=tiles[1])
    ref = C.contrastive_forward_torch(x.double(), y.double(), scale.double(), *offs, True)
    for o, r, name in zip(out, ref, ("lse_row", "lse_col", "pos_row", "pos_col")):
        assert o.dtype == torch.float32 and o.shape == r.shape
        _close(o.double(), r, rtol=1e-5, atol=1e-5, msg=name)
    # compute_col=False: the row outputs are unchanged
    out2 = CPU.contrastive_forward(x, y, scale, *offs, False, tile_m=tiles[0], tile_n=tiles[1])
    _close(out2[0], out[0])
    _close(out2[2], out[2])


@pytest.mark.parametrize("M,N,d,offs", CONTRACT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_backward_contract(M, N, d, offs, dtype):
    x, y = torch.randn(M, d, dtype=dtype), torch.randn(N, d, dtype=dtype)
    scale = torch.tensor(2.5, dtype=dtype)
    lse_row, lse_col, _, _ = CPU.contrastive_forward(x, y, scale, *offs, True)
    row_coef, col_coef = torch.rand(M, dtype=dtype), torch.rand(N, dtype=dtype)
    col_coef[::2] = 0  # zero coefficients skip their term
    out = CPU.contrastive_backward(x, y, scale, lse_row, lse_col, row_coef, col_coef, 0.7, *offs, tile_m=2,
                                     tile_n=3)
    ref = C.contrastive_backward_torch(x.double(), y.double(), scale.double(), lse_row.double(), lse_col.double(),
                                       row_coef.double(), col_coef.double(), 0.7, *offs)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for o, r, name in zip(out, ref, ("dx", "dy", "dscale")):
        assert o.dtype == dtype
        _close(o.double(), r, rtol=tol, atol=tol, msg=name)


def test_row_only_ignores_unspecified_column_lse():
    """col_coef = 0 with lse_col left as zeros (compute_col=False) must not produce inf·0 = NaN at scale 100."""
    x, y = _feats(4, 3, requires_grad=False), _feats(8, 3, requires_grad=False)
    scale = torch.tensor(100.0)
    lse_row, lse_col, _, _ = CPU.contrastive_forward(x, y, scale, 0, 1, 0, 2, False)
    dx, dy, ds = CPU.contrastive_backward(x, y, scale, lse_row, lse_col, torch.ones(4), torch.zeros(8), 1.0,
                                            0, 1, 0, 2)
    assert torch.isfinite(dx).all() and torch.isfinite(dy).all() and torch.isfinite(ds)


def test_positive_counts_match_mask():
    for M, N, d, offs in CONTRACT_CASES:
        mask = C.positive_mask(M, N, *offs)
        r, c = C.positive_counts(M, N, *offs)
        assert torch.equal(r, mask.sum(1).float()) and torch.equal(c, mask.sum(0).float())


def test_extension_rejects_bad_arguments():
    from ccr_fast._backend import extension

    ext = extension()
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="float32 or float64"):
        ext.contrastive_forward_cpu(x.data_ptr(), x.data_ptr(), 2, 2, 3, 3, 3, 2, 1.0, 0, 1, 0, 1, True,
                                    *[x.data_ptr()] * 4)
    with pytest.raises(ValueError, match="row_div"):
        ext.contrastive_forward_cpu(x.data_ptr(), x.data_ptr(), 2, 2, 3, 3, 3, 0, 1.0, 0, 0, 0, 1, True,
                                    *[x.data_ptr()] * 4)
    with pytest.raises(ValueError, match="ldx"):
        ext.contrastive_forward_cpu(x.data_ptr(), x.data_ptr(), 2, 2, 3, 2, 3, 0, 1.0, 0, 1, 0, 1, True,
                                    *[x.data_ptr()] * 4)


# ---------------------------------------------------------------------------------------------------------------
# clip_loss
# ---------------------------------------------------------------------------------------------------------------

CLIP_SHAPES = [(1, 1), (1, 6), (2, 3), (7, 5), (65, 33), (130, 17), (300, 8)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,d", CLIP_SHAPES)
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_clip_loss_matches_reference(backend, B, d, scale):
    img, txt = _feats(B, d), _feats(B, d)
    s = torch.tensor(scale, requires_grad=True)
    loss, (gi, gt, gs) = _grads(lambda a, b, c: losses.clip_loss(a, b, c, backend=backend), img, txt, s)
    ref, (ri, rt, rs) = _grads(clip_ref, img, txt, s)
    plain, (pi, pt, ps) = _grads(_clip_fp32, img, txt, s)  # plain fp32 torch, for the error budget
    assert loss.dtype == torch.float32 and loss.dim() == 0
    floor = 1e-6 * max(1.0, scale)
    assert_close_fa(loss, ref, plain, floor=floor, what="loss")
    assert_close_fa(gi, ri, pi, floor=floor, what="d image")
    assert_close_fa(gt, rt, pt, floor=floor, what="d text")
    assert_close_fa(gs, rs, ps, floor=1e-6, what="d scale")


def _clip_fp32(img, txt, s):
    z = s * img @ txt.T
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(z, labels) + F.cross_entropy(z.T, labels)) / 2


def _check_clip_fp32(backend, tensors, scale, floor, view=lambda a, b: (a, b)):
    """clip_loss(*view(tensors)) in fp32 vs float64 clip_ref, with the error budget of plain fp32 torch."""
    loss, grads = _grads(lambda a, b: losses.clip_loss(*view(a, b), scale, backend=backend), *tensors)
    ref, rgrads = _grads(lambda a, b: clip_ref(*view(a, b), scale), *tensors)
    plain, pgrads = _grads(lambda a, b: _clip_fp32(*view(a, b), scale), *tensors)
    assert_close_fa(loss, ref, plain, floor=floor, what="loss")
    for i, (g, r, p) in enumerate(zip(grads, rgrads, pgrads)):
        assert_close_fa(g, r, p, floor=floor, what=f"grad {i}")
    return grads


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_loss_duplicated_rows_and_float_scale(backend):
    base = _feats(4, 6, requires_grad=False)
    img = torch.cat([base, base]).requires_grad_()  # every row twice
    txt = torch.cat([base, base.flip(0)]).requires_grad_()
    _check_clip_fp32(backend, (img, txt), 20.0, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_loss_non_contiguous_inputs(backend):
    big_i = torch.randn(9, 20, requires_grad=True)
    big_t = torch.randn(20, 9, requires_grad=True)
    img = big_i[:, 3:14]  # row stride 20 > d = 11: passed to the kernel as is
    txt = big_t.T[:, 2:13]  # stride along d != 1: made contiguous
    assert not img.is_contiguous() and txt.stride(1) != 1
    gi, gt = _check_clip_fp32(backend, (big_i, big_t), 7.0, 1e-6, view=lambda a, b: (a[:, 3:14], b.T[:, 2:13]))
    assert gi[:, :3].abs().max() == 0 and gt[:2].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_clip_loss_half_inputs(backend, dtype):
    img, txt = _feats(33, 19, dtype), _feats(33, 19, dtype)
    s = torch.tensor(50.0, requires_grad=True)
    loss, (gi, gt, gs) = _grads(lambda a, b, c: losses.clip_loss(a, b, c, backend=backend), img, txt, s)
    assert loss.dtype == torch.float32 and gi.dtype == dtype and gt.dtype == dtype and gs.dtype == torch.float32
    # Reference on the same (rounded) values in float64: fp32 accumulation inside, so close in fp32 terms.
    ref, (ri, rt, rs) = _grads(clip_ref, img, txt, s)
    _close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    _close(gs.double(), rs, rtol=1e-4, atol=1e-5)
    # the feature gradients are rounded to the input dtype on the way out
    rtol = 1e-2 if dtype == torch.float16 else 2e-2
    _close(gi.double(), ri, rtol=rtol, atol=rtol * ri.abs().max().item())
    _close(gt.double(), rt, rtol=rtol, atol=rtol * rt.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_unit_upstream_grad_and_no_scale_grad(backend):
    img, txt = _feats(6, 4), _feats(6, 4)
    s = torch.tensor(9.0)  # no grad wanted
    _, (gi, gt) = _grads(lambda a, b: -2.5 * losses.clip_loss(a, b, s, backend=backend), img, txt)
    _, (ri, rt) = _grads(lambda a, b: -2.5 * clip_ref(a, b, s), img, txt)
    _close(gi, ri, rtol=1e-5, atol=2e-6)
    _close(gt, rt, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_fp64(backend):
    img = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: losses.clip_loss(a, b, c, backend=backend), (img, txt, s))
    txt3 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    for div in ("K", "1"):
        assert torch.autograd.gradcheck(
            lambda a, b, c: losses.one_to_k_loss(a, b, c, t2i_divisor=div, backend=backend), (img[:4], txt3, s))
    # local-loss style rows (rank 1 of 2, b = 3): row-only CE
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, c: C.contrastive_loss(a, b, c, row_off=3, w_row=0.25, w_col=0.0, backend=backend), (x, y, s))


# ---------------------------------------------------------------------------------------------------------------
# one_to_k_loss
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,K,d", [(1, 1, 4), (1, 3, 5), (3, 2, 7), (5, 10, 9), (70, 4, 16)])
@pytest.mark.parametrize("div", ["K", "1"])
def test_one_to_k_matches_reference(backend, B, K, d, div):
    img = _feats(B, d)
    txt = F.normalize(torch.randn(B, K, d), dim=-1).requires_grad_()
    s = torch.tensor(30.0, requires_grad=True)
    loss, (gi, gt, gs) = _grads(lambda a, b, c: losses.one_to_k_loss(a, b, c, t2i_divisor=div, backend=backend),
                                img, txt, s)
    ref, (ri, rt, rs) = _grads(lambda a, b, c: one_to_k_ref(a, b, c, div), img, txt, s)
    _close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    _close(gi.double(), ri, rtol=1e-4, atol=1e-6)
    _close(gt.double(), rt, rtol=1e-4, atol=1e-6)
    _close(gs.double(), rs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_to_k_with_k1_equals_clip(backend):
    img, txt = _feats(9, 6), _feats(9, 6)
    s = torch.tensor(12.0, requires_grad=True)
    for div in ("K", "1"):
        a, ga = _grads(lambda i, t, c: losses.one_to_k_loss(i, t[:, None], c, t2i_divisor=div, backend=backend),
                       img, txt, s)
        b, gb = _grads(lambda i, t, c: losses.clip_loss(i, t, c, backend=backend), img, txt, s)
        _close(a, b, rtol=1e-6, atol=1e-6)
        for u, v in zip(ga, gb):
            _close(u, v, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [1, 3])
def test_one_to_k_closed_form_gradient(backend, K):
    """docs/methods.md "ccrk": dL/dZ = (1/(2K))[(K·P − Y)/B + (Q − Y)/(BK)], dI = s·dZ T, dT = s·dZᵀ I, ds = Σ dZ⊙(I Tᵀ)."""
    B, d, s = 5, 6, 4.0
    img = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    txt = torch.randn(B, K, d, dtype=torch.float64, requires_grad=True)
    sc = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    _, (gi, gt, gs) = _grads(lambda a, b, c: losses.one_to_k_loss(a, b, c, backend=backend), img, txt, sc)
    T = txt.detach().reshape(B * K, d)
    raw = img.detach() @ T.T
    z = s * raw
    P, Q = torch.softmax(z, dim=1), torch.softmax(z, dim=0)
    Y = (torch.arange(B)[:, None] == (torch.arange(B * K) // K)[None, :]).double()
    dz = ((K * P - Y) / B + (Q - Y) / (B * K)) / (2 * K)
    _close(gi, s * dz @ T, rtol=1e-10, atol=1e-12)
    _close(gt.reshape(B * K, d), s * dz.T @ img.detach(), rtol=1e-10, atol=1e-12)
    _close(gs, (dz * raw).sum(), rtol=1e-10, atol=1e-12)


def test_one_to_k_divisors_differ_as_documented():
    img, txt = _feats(4, 5, requires_grad=False), F.normalize(torch.randn(4, 3, 5), dim=-1)
    lk = losses.one_to_k_loss(img, txt, 10.0, t2i_divisor="K", backend="cpu")
    l1 = losses.one_to_k_loss(img, txt, 10.0, t2i_divisor="1", backend="cpu")
    # (L_i2t + L_t2i)/(2K) vs (L_i2t/K + L_t2i)/2: difference is L_t2i (1/2 − 1/(2K))
    z = 10.0 * img.double() @ txt.reshape(12, 5).double().T
    y = (torch.arange(4)[:, None] == (torch.arange(12) // 3)[None, :]).double()
    l_t2i = -(torch.log_softmax(z, dim=0) * y).sum() / 12
    _close((l1 - lk).double(), l_t2i * (0.5 - 1 / 6), rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 9), K=st.integers(1, 5), d=st.integers(1, 12), scale=st.floats(0.0, 100.0),
       div=st.sampled_from(["K", "1"]), seed=st.integers(0, 2**16))
def test_one_to_k_property_cpu_matches_reference(B, K, d, scale, div, seed):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(B, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(B, K, d, generator=g), dim=-1).requires_grad_()
    loss, (gi, gt) = _grads(lambda a, b: losses.one_to_k_loss(a, b, scale, t2i_divisor=div, backend="cpu"), img, txt)
    ref, (ri, rt) = _grads(lambda a, b: one_to_k_ref(a, b, scale, div), img, txt)
    tol = 2e-6 * max(1.0, scale)
    assert abs(loss.item() - ref.item()) <= tol * max(1.0, abs(ref.item()))
    assert (gi.double() - ri).abs().max() <= tol and (gt.double() - rt).abs().max() <= tol
    assert loss.item() >= -tol  # a cross-entropy is non-negative


@pytest.mark.parametrize("backend", BACKENDS)
def test_general_rule_matches_reference(backend):
    x, y = torch.randn(11, 5, requires_grad=True), torch.randn(13, 5, requires_grad=True)
    offs = (1, 3, 2, 4)
    loss, (gx, gy) = _grads(lambda a, b: C.contrastive_loss(a, b, torch.tensor(2.0), row_off=1, row_div=3,
                                                            col_off=2, col_div=4, w_row=0.3, w_col=0.2,
                                                            backend=backend), x, y)
    ref, (rx, ry) = _grads(lambda a, b: general_ref(a, b, 2.0, offs, 0.3, 0.2), x, y)
    _close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    _close(gx.double(), rx, rtol=1e-5, atol=1e-6)
    _close(gy.double(), ry, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Errors, autocast, compile, opcheck
# ---------------------------------------------------------------------------------------------------------------


def test_documented_errors():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(TypeError, match="image_features"):
        losses.clip_loss(a.numpy(), b, 1.0)
    with pytest.raises(ValueError, match="text_features.*2-D"):
        losses.clip_loss(a, b[None], 1.0)
    with pytest.raises(ValueError, match="feature size 3"):
        losses.clip_loss(a, torch.randn(4, 5), 1.0)
    with pytest.raises(ValueError, match="batch size 4"):
        losses.clip_loss(a, torch.randn(5, 3), 1.0)
    with pytest.raises(ValueError, match="same dtype"):
        losses.clip_loss(a, b.double(), 1.0)
    with pytest.raises(ValueError, match="non-empty batch"):
        losses.clip_loss(a[:0], b[:0], 1.0)
    with pytest.raises(ValueError, match="int64"):
        losses.clip_loss(a.long(), b.long(), 1.0)
    for bad in (float("nan"), float("inf"), torch.tensor(float("-inf"))):
        with pytest.raises(ValueError, match="logit_scale.*NaN or Inf"):
            losses.clip_loss(a, b, bad)
    with pytest.raises(ValueError, match="logit_scale.*scalar"):
        losses.clip_loss(a, b, torch.ones(2))
    with pytest.raises(TypeError, match="logit_scale"):
        losses.clip_loss(a, b, "10")
    with pytest.raises(ValueError, match="backend must be one of"):
        losses.clip_loss(a, b, 1.0, backend="gpu")
    with pytest.raises(RuntimeError, match="cuda"):
        losses.clip_loss(a, b, 1.0, backend="cuda")
    t3 = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match="K >= 1"):
        losses.one_to_k_loss(a, t3[:, :0], 1.0)
    with pytest.raises(ValueError, match="t2i_divisor"):
        losses.one_to_k_loss(a, t3, 1.0, t2i_divisor="2")
    with pytest.raises(ValueError, match="3-D"):
        losses.one_to_k_loss(a, b, 1.0)
    with pytest.raises(ValueError, match="batch size 4"):
        losses.one_to_k_loss(a, t3[:3], 1.0)
    with pytest.raises(ValueError, match="k .* >= 1"):
        losses.OneToKLoss(0)
    with pytest.raises(ValueError, match="K=3"):
        losses.OneToKLoss(3)(a, t3, 1.0)
    with pytest.raises(ValueError, match="4\\*2=8 rows"):
        losses.OneToKLoss(2)(a, torch.randn(7, 3), 1.0)
    with pytest.raises(ValueError, match="rank"):
        losses.ClipLoss(rank=2, world_size=2)
    with pytest.raises(RuntimeError, match="process group"):
        losses.ClipLoss(world_size=2)(a, b, 1.0)


def test_modules_world_size_one():
    img, txt3 = _feats(5, 4), F.normalize(torch.randn(5, 2, 4), dim=-1)
    s = torch.tensor(8.0)
    out = losses.ClipLoss()(img, txt3[:, 0], s, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    _close(out["contrastive_loss"].double(), clip_ref(img, txt3[:, 0], s), rtol=1e-5, atol=1e-6)
    m = losses.OneToKLoss(2, t2i_divisor="1")
    ref = one_to_k_ref(img, txt3, s, "1")
    _close(m(img, txt3, s).double(), ref, rtol=1e-5, atol=1e-6)
    _close(m(img, txt3.reshape(10, 4), s).double(), ref, rtol=1e-5, atol=1e-6)
    cl = losses.ClipLoss(cache_labels=True)
    assert torch.equal(cl.get_ground_truth(img.device, 5), torch.arange(5))
    logits_i, logits_t = cl.get_logits(img, txt3[:, 0], s)
    _close(logits_t, logits_i.T)


def test_autocast_policy():
    img, txt = _feats(8, 16), _feats(8, 16)
    s = torch.tensor(20.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = losses.clip_loss(img, txt.double().float(), s, backend="cpu")
        mixed = losses.clip_loss(img, txt.to(torch.bfloat16), s, backend="torch")  # mixed dtypes allowed here
    assert loss.dtype == torch.float32
    loss.backward()
    assert img.grad.dtype == torch.float32 and s.grad is not None
    ref = clip_ref(img.to(torch.bfloat16), txt.to(torch.bfloat16), s)  # computed on the autocast-rounded values
    _close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    _close(mixed.double(), ref, rtol=1e-5, atol=1e-4)


def test_torch_compile_fullgraph_cpu():
    img, txt = _feats(6, 5), _feats(6, 5)
    s = torch.tensor(5.0, requires_grad=True)
    fn = torch.compile(lambda a, b, c: losses.clip_loss(a, b, c, backend="cpu"), fullgraph=True, backend="eager")
    loss, grads = _grads(fn, img, txt, s)
    ref, rgrads = _grads(clip_ref, img, txt, s)
    _close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, rgrads):
        _close(g.double(), r, rtol=1e-5, atol=1e-6)
    fn2 = torch.compile(lambda a, b, c: losses.one_to_k_loss(a, b, c, backend="cpu"), fullgraph=True)
    img3, txt3 = img.detach()[:3].clone().requires_grad_(), txt.detach().reshape(3, 2, 5).clone().requires_grad_()
    loss3, grads3 = _grads(fn2, img3, txt3, s)
    ref3, rgrads3 = _grads(one_to_k_ref, img3, txt3, s)
    _close(loss3, ref3, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads3, rgrads3):
        _close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_custom_ops(backend):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.ccr_fast.contrastive_fwd.default, (x, y, s, 0, 1, 0, 2, 0.1, 0.05, backend))
    torch.library.opcheck(torch.ops.ccr_fast.contrastive_fwd.default,
                          tuple(t.detach().float().requires_grad_() for t in (x, y, s)) + (3, 1, 0, 1, 0.2, 0.0, backend))
    _, lse_row, lse_col, kept = torch.ops.ccr_fast.contrastive_fwd(x, y, s, 0, 1, 0, 2, 0.1, 0.05, backend)
    from ccr_fast.backends.blas import keeps_scores

    assert kept.shape == ((5, 10) if backend == "blas" and keeps_scores(5, 10, torch.float64) else (0,))
    torch.library.opcheck(torch.ops.ccr_fast.contrastive_bwd.default,
                          (torch.tensor(1.5, dtype=torch.float64), x.detach(), y.detach(), s.detach(), lse_row,
                           lse_col, kept, 0, 1, 0, 2, 0.1, 0.05, backend))


# ---------------------------------------------------------------------------------------------------------------
# similarity_distillation_loss (NRCCR DTL, docs/methods.md "nrccr")
# ---------------------------------------------------------------------------------------------------------------


def _dtl_ref(teacher, student, anchor, tau):
    """DTL written with explicit per-row / per-column sums in float64."""
    lt = teacher.detach().double() @ anchor.double().T / tau
    ls = student.double() @ anchor.double().T / tau
    n, m = lt.shape
    t2v = sum(-(torch.softmax(lt[i], 0) * torch.log_softmax(ls[i], 0)).sum() for i in range(n)) / n
    v2t = sum(-(torch.softmax(lt[:, j], 0) * torch.log_softmax(ls[:, j], 0)).sum() for j in range(m)) / m
    return (t2v + v2t) / 2


def test_dtl_matches_reference_and_gradient_flow():
    teacher, student, anchor = _feats(6, 5), _feats(6, 5), _feats(6, 5)
    loss = losses.similarity_distillation_loss(teacher, student, anchor, temperature=0.07)
    ref = _dtl_ref(teacher, student, anchor, 0.07)
    _close(loss, ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert teacher.grad is None  # detached inside
    assert student.grad is not None and student.grad.abs().max() > 0
    # the anchor gets gradient through the student *and* the teacher logits
    a2 = anchor.detach().clone().requires_grad_()
    (gs,) = torch.autograd.grad(_dtl_ref(teacher, student, a2, 0.07), a2)
    _close(anchor.grad, gs, rtol=1e-4, atol=1e-5)
    # ... and the teacher path matters: dropping it (anchor detached in the teacher logits) changes the gradient
    a3 = anchor.detach().clone().requires_grad_()
    lt = teacher.detach().double() @ a3.detach().double().T / 0.07
    ls = student.detach().double() @ a3.double().T / 0.07
    student_only = -0.5 * ((torch.softmax(lt, 1) * torch.log_softmax(ls, 1)).sum(1).mean()
                           + (torch.softmax(lt, 0) * torch.log_softmax(ls, 0)).sum(0).mean())
    (g_student_only,) = torch.autograd.grad(student_only, a3)
    assert (g_student_only - gs).abs().max() > 1e-3
    assert loss.dtype == torch.float32


def test_dtl_teacher_equals_student_gives_entropy_and_zero_student_grad():
    x, anchor = _feats(5, 4, torch.float64), _feats(5, 4, torch.float64)
    student = x.detach().clone().requires_grad_()
    loss = losses.similarity_distillation_loss(x, student, anchor, temperature=0.1)
    lt = x.detach() @ anchor.detach().T / 0.1
    p_row, p_col = torch.softmax(lt, 1), torch.softmax(lt, 0)
    entropy = 0.5 * (-(p_row * p_row.log()).sum(1).mean() - (p_col * p_col.log()).sum(0).mean())
    _close(loss, entropy, rtol=1e-10, atol=1e-12)
    (gs,) = torch.autograd.grad(loss, student)
    assert gs.abs().max() < 1e-12


def test_dtl_errors():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        losses.similarity_distillation_loss(a, a, a, temperature=0.0)
    with pytest.raises(ValueError, match="anchor.*feature size 4"):
        losses.similarity_distillation_loss(a, a, torch.randn(3, 5))
    with pytest.raises(ValueError, match="student.*batch size 3"):
        losses.similarity_distillation_loss(a, torch.randn(2, 4), a)


def test_triplet_wrappers_delegate_to_the_op():
    from ccr_fast.ops.triplet import triplet_loss as op

    a, b = _feats(5, 4, requires_grad=False), _feats(5, 4, requires_grad=False)
    for mv, red in ((True, "sum"), (False, "mean")):
        want = op(a, b, margin=0.3, max_violation=mv, reduction=red, backend="torch")
        _close(losses.triplet_loss(a, b, margin=0.3, max_violation=mv, reduction=red, backend="torch"), want)
        _close(losses.TripletLoss(0.3, mv, red, backend="torch")(a, b), want)


@pytest.mark.triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="needs TRITON_INTERPRET=1 (set before the session) or a CUDA device")
def test_triton_dispatch_one_to_k():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    img = F.normalize(torch.randn(5, 8), dim=-1).to(dev).requires_grad_()
    txt = F.normalize(torch.randn(5, 2, 8), dim=-1).to(dev).requires_grad_()
    s = torch.tensor(10.0, device=dev, requires_grad=True)
    loss, grads = _grads(lambda a, b, c: losses.one_to_k_loss(a, b, c, backend="triton"), img, txt, s)
    ref, rgrads = _grads(lambda a, b, c: one_to_k_ref(a.cpu(), b.cpu(), c.cpu()), img, txt, s)
    _close(loss.cpu(), ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, rgrads):
        _close(g.cpu(), r.cpu(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Conformance: every backend's host functions against the float64 reference (small shapes)
# ---------------------------------------------------------------------------------------------------------------

from _backends import CONTRACT_BACKENDS, device_of  # noqa: E402
from ccr_fast.ops import dispatch  # noqa: E402


@pytest.mark.parametrize("backend", CONTRACT_BACKENDS)
@pytest.mark.parametrize("M,N,d,offs", CONTRACT_CASES + [(1, 1, 1, (0, 1, 0, 1)), (70, 33, 17, (0, 1, 0, 1))])
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_contract_every_backend(backend, M, N, d, offs, scale, dtype):
    """fp32 and fp16 inputs (the reference runs on the same rounded values in float64; fp32 accumulation)."""
    dev = device_of(backend)
    x = F.normalize(torch.randn(M, d, dtype=torch.float64), dim=-1).to(dtype).double()
    y = F.normalize(torch.randn(N, d, dtype=torch.float64), dim=-1).to(dtype).double()
    s = torch.tensor(scale, dtype=torch.float64)
    ref = C.contrastive_forward_torch(x, y, s, *offs, True)
    fwd = dispatch.host(C.HOST, backend, "contrastive_forward")
    bwd = dispatch.host(C.HOST, backend, "contrastive_backward")
    xd, yd, sd = x.to(dtype).to(dev), y.to(dtype).to(dev), s.float().to(dev)
    out = fwd(xd, yd, sd, *offs, True)
    tol = dict(rtol=1e-4, atol=1e-4 * scale)
    for o, r, name in zip(out, ref, ("lse_row", "lse_col", "pos_row", "pos_col")):
        _close(o.cpu(), r, msg=name, **tol)
    rc, cc = torch.rand(M, dtype=torch.float64), torch.rand(N, dtype=torch.float64)
    bref = C.contrastive_backward_torch(x, y, s, ref[0], ref[1], rc, cc, 0.7, *offs)
    got = bwd(xd, yd, sd, ref[0].float().to(dev), ref[1].float().to(dev), rc.float().to(dev), cc.float().to(dev), 0.7,
              *offs)
    for o, r, name in zip(got, bref, ("dx", "dy", "dscale")):
        _close(o.cpu(), r, msg=name, rtol=1e-4, atol=1e-4 * scale * max(1.0, float(r.abs().max())))


@pytest.mark.parametrize("M,N,d,offs", CONTRACT_CASES)
@pytest.mark.parametrize("tiles", [(0, 0), (2, 3), (1, 1)])
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blas_tiles_keep_and_dtypes(M, N, d, offs, tiles, keep, dtype):
    """The blas kernels on forced small tiles, with and without the kept scores, float32 and float64."""
    from ccr_fast.backends.blas import contrastive as BL

    x, y = torch.randn(M, d, dtype=dtype), torch.randn(N, d, dtype=dtype)
    s = torch.tensor(2.5, dtype=dtype)
    kept = torch.empty(M, N, dtype=dtype) if keep else None
    out = BL.contrastive_forward(x, y, s, *offs, True, keep=kept, tile_m=tiles[0], tile_n=tiles[1])
    ref = C.contrastive_forward_torch(x.double(), y.double(), s.double(), *offs, True)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for o, r in zip(out, ref):
        assert o.dtype == dtype
        _close(o, r, **tol)
    if keep:
        _close(kept, x.double() @ y.double().T, **tol)
    rc, cc = torch.rand(M, dtype=dtype), torch.rand(N, dtype=dtype)
    got = BL.contrastive_backward(x, y, s, out[0], out[1], rc, cc, 0.7, *offs, saved=kept, tile_m=tiles[0],
                                  tile_n=tiles[1])
    bref = C.contrastive_backward_torch(x.double(), y.double(), s.double(), out[0].double(), out[1].double(),
                                        rc.double(), cc.double(), 0.7, *offs)
    for o, r in zip(got, bref):
        _close(o, r, **tol)
    if keep:
        _close(kept, x.double() @ y.double().T, **tol)  # read only


def test_blas_backward_without_partials_workspace(monkeypatch):
    """Budget 0: no kept scores, no dy partials (row pass + column pass) - same gradients."""
    monkeypatch.setenv("CCR_FAST_BLAS_WORKSPACE_MB", "0")
    img, txt = _feats(37, 9, torch.float64), _feats(37, 9, torch.float64)
    s = torch.tensor(30.0, dtype=torch.float64, requires_grad=True)
    loss, grads = _grads(lambda a, b, c: losses.clip_loss(a, b, c, backend="blas"), img, txt, s)
    ref, rgrads = _grads(clip_ref, img, txt, s)
    _close(loss, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, rgrads):
        _close(g, r, rtol=1e-10, atol=1e-12)


def test_blas_keep_z_survives_retain_graph():
    """The kept scores are read only: a second backward through the same graph gives the same gradients."""
    img, txt = _feats(8, 5, torch.float64), _feats(8, 5, torch.float64)
    loss = losses.clip_loss(img, txt, 10.0, backend="blas")
    g1 = torch.autograd.grad(loss, (img, txt), retain_graph=True)
    g2 = torch.autograd.grad(loss, (img, txt))
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)

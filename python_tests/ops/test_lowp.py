"""bf16 / fp16 inputs: the losses run their GEMMs in the input precision with fp32 accumulation, everything else fp32.

Tolerances (docs/precision.md), against float64 references:

* on the **same rounded inputs** (the reference widens the bf16/fp16 values exactly): products of two bf16 or
  fp16 numbers are exact in fp32, so the loss, the LSEs and dscale carry only fp32 accumulation error:
  ``|err| <= 1e-5 · max(1, |ref|) + 2e-6 · scale``. The feature gradients also carry the rounding of dZ to the GEMM
  operand dtype (bf16 on the CPU bf16 GEMM and on GPUs) and of the result to the input dtype:
  elementwise ``|err| <= u · (scale · |dZ|·|y| + |ref|) + 1e-6`` with ``u = 2⁻⁸`` (bf16) or ``2⁻¹⁰`` (fp16), i.e.
  twice the unit roundoff of the dtype;
* on the **unrounded** fp32 features: the input rounding moves every logit by at most
  ``scale · 2u·|x||y|`` (u = 2⁻⁹ bf16, 2⁻¹¹ fp16), so the loss moves by at most twice that (loose; stated, tested);
* flash-attention's rule: our error against float64 is at most 2× that of plain torch in the same dtype
  (+ the floor above).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _backends import device_of
from _contrastive_ref import clip_ref, one_to_k_ref
from ccr_fast import losses
from ccr_fast.ops import contrastive as C
from ccr_fast.ops import dispatch

LOWP = (torch.bfloat16, torch.float16)
UNIT = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -10}  # twice the unit roundoff


def _lowp_status():
    from ccr_fast.backends.blas import _lowp

    return _lowp.status()


def _feats(n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, dtype=torch.float64, generator=g), dim=-1).to(dtype)


def _loss_tol(ref, scale):
    return 1e-5 * max(1.0, abs(float(ref.detach()))) + 2e-6 * scale


def _grad_bound(dz, y, ref, scale, dtype):
    """Elementwise bound of a feature gradient ``scale · dZ y``: dZ and the result rounded to ``dtype``."""
    return UNIT[dtype] * (scale * (dz.abs() @ y.abs()) + ref.abs()) + 1e-6


def _check_grad(got, ref, bound, name):
    err = (got.double() - ref).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"{name}: error exceeds the bound by {worst:.3g} (max err {err.max().item():.3g})"


# ---------------------------------------------------------------------------------------------------------------
# The CPU bf16 GEMM itself
# ---------------------------------------------------------------------------------------------------------------


def test_bf16_gemm_status_is_explained():
    ok, why = _lowp_status()
    assert isinstance(ok, bool) and why


@pytest.mark.parametrize("M,N,d", [(1, 1, 1), (5, 7, 3), (64, 64, 64), (130, 300, 100), (257, 65, 256)])
@pytest.mark.parametrize("tiles", [(0, 0), (64, 64)])
@pytest.mark.parametrize("offs", [(0, 1, 0, 1), (0, 1, 0, 3), (1, 3, 2, 4)])
def test_blas_bf16_contract(M, N, d, tiles, offs):
    """The bf16 GEMM path of the blas kernels (padding to 64, forced multi-tile) vs float64 on the same values."""
    if not _lowp_status()[0]:
        pytest.skip(_lowp_status()[1])
    from ccr_fast.backends.blas import contrastive as BL

    x, y = _feats(M, d, torch.bfloat16, 1), _feats(N, d, torch.bfloat16, 2)
    scale = 30.0
    s = torch.tensor(scale)
    xd, yd, sd = x.double(), y.double(), s.double()
    ref = C.contrastive_forward_torch(xd, yd, sd, *offs, True)
    out = BL.contrastive_forward(x, y, s, *offs, True, tile_m=tiles[0], tile_n=tiles[1])
    for o, r, name in zip(out, ref, ("lse_row", "lse_col", "pos_row", "pos_col")):
        assert o.dtype == torch.float32
        torch.testing.assert_close(o.double(), r, rtol=1e-5, atol=2e-6 * scale, msg=name)
    rc = torch.rand(M, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cc = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    bref = C.contrastive_backward_torch(xd, yd, sd, ref[0], ref[1], rc, cc, 0.7, *offs)
    got = BL.contrastive_backward(x, y, s, ref[0].float(), ref[1].float(), rc.float(), cc.float(), 0.7, *offs,
                                  tile_m=tiles[0], tile_n=tiles[1])
    # dZ of the reference, for the bound
    z = scale * xd @ yd.T
    pos = C.positive_mask(M, N, *offs).double()
    dz = rc[:, None] * torch.exp(z - ref[0][:, None]) + cc[None, :] * torch.exp(z - ref[1][None, :]) - 0.7 * pos
    _check_grad(got[0], bref[0], _grad_bound(dz, yd, bref[0], scale, torch.bfloat16), "dx")
    _check_grad(got[1], bref[1], _grad_bound(dz.T, xd, bref[1], scale, torch.bfloat16), "dy")
    torch.testing.assert_close(got[2].double(), bref[2], rtol=1e-5, atol=1e-5 * max(1.0, float(bref[2].abs())))
    # the error is really that of bf16 operands (not an fp32 GEMM in disguise) where dZ has non-bf16 values
    if M * N >= 64 * 64:
        assert (got[0].double() - bref[0]).abs().max() > 0


def test_blas_bf16_path_is_taken_and_differs_from_fp32():
    """bf16 inputs take the bf16 GEMM on blas (when present); CCR_FAST_BLAS_BF16=0 semantics: fp32 widening."""
    if not _lowp_status()[0]:
        pytest.skip(_lowp_status()[1])
    from ccr_fast.backends.blas import contrastive as BL

    x, y = _feats(96, 64, torch.bfloat16, 5), _feats(80, 64, torch.bfloat16, 6)
    s = torch.tensor(10.0)
    lr, lc, _, _ = BL.contrastive_forward(x, y, s, 0, 1, 0, 1, True)
    rc, cc = torch.full((96,), 0.5 / 96), torch.full((80,), 0.5 / 80)
    dx16 = BL.contrastive_backward(x, y, s, lr, lc, rc, cc, 1.0 / 96, 0, 1, 0, 1)[0]
    dx32 = BL.contrastive_backward(x.float(), y.float(), s, lr, lc, rc, cc, 1.0 / 96, 0, 1, 0, 1)[0]
    # same math; the bf16 path rounds dZ to bf16: close, but not bit-identical
    torch.testing.assert_close(dx16, dx32, rtol=0, atol=2.0 ** -8 * float(dx32.abs().max()) * 4)
    assert not torch.equal(dx16, dx32)


# ---------------------------------------------------------------------------------------------------------------
# Public losses on every CPU backend, bf16 and fp16, gradients included
# ---------------------------------------------------------------------------------------------------------------

CPU_BACKENDS = ["torch", "cpu", "blas"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("B,d,scale", [(1, 3, 10.0), (33, 19, 50.0), (130, 64, 100.0)])
def test_clip_loss_lowp_vs_float64_same_values(backend, dtype, B, d, scale):
    img = _feats(B, d, dtype, 7).requires_grad_()
    txt = _feats(B, d, dtype, 8).requires_grad_()
    s = torch.tensor(scale, requires_grad=True)
    loss = losses.clip_loss(img, txt, s, backend=backend)
    loss.backward()
    assert loss.dtype == torch.float32 and img.grad.dtype == dtype and s.grad.dtype == torch.float32
    i64 = img.detach().double().requires_grad_()
    t64 = txt.detach().double().requires_grad_()
    s64 = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    ref = clip_ref(i64, t64, s64)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= _loss_tol(ref, scale)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-5 * scale)
    with torch.no_grad():
        z = scale * i64 @ t64.T
        lab = torch.eye(B, dtype=torch.float64)
        dz = (torch.softmax(z, 1) - lab) / (2 * B) + (torch.softmax(z, 0) - lab) / (2 * B)
    _check_grad(img.grad, i64.grad, _grad_bound(dz, t64.detach(), i64.grad, scale, dtype), "d_image")
    _check_grad(txt.grad, t64.grad, _grad_bound(dz.T, i64.detach(), t64.grad, scale, dtype), "d_text")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", LOWP)
def test_one_to_k_lowp_vs_float64(backend, dtype):
    B, K, d, scale = 24, 3, 40, 20.0
    img = _feats(B, d, dtype, 9).requires_grad_()
    txt = _feats(B * K, d, dtype, 10).reshape(B, K, d).requires_grad_()
    loss = losses.one_to_k_loss(img, txt, scale, backend=backend)
    loss.backward()
    i64 = img.detach().double().requires_grad_()
    t64 = txt.detach().double().requires_grad_()
    ref = one_to_k_ref(i64, t64, scale)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= _loss_tol(ref, scale)
    # gradient bound with |dZ| <= the dense dZ of the reference (computed by autograd on Z)
    z = (scale * i64.detach() @ t64.detach().reshape(B * K, d).T).requires_grad_()
    owner = torch.arange(B * K) // K
    y = (torch.arange(B)[:, None] == owner[None, :]).double()
    lz = ((-(torch.log_softmax(z, 1) * y).sum() / B) + (-(torch.log_softmax(z, 0) * y).sum() / (B * K))) / (2 * K)
    (dz,) = torch.autograd.grad(lz, z)  # dL/dZ with Z = scale · I Tᵀ
    _check_grad(img.grad, i64.grad, _grad_bound(dz, t64.detach().reshape(B * K, d), i64.grad, scale, dtype),
                "d_image")
    _check_grad(txt.grad.reshape(B * K, d), t64.grad.reshape(B * K, d),
                _grad_bound(dz.T, i64.detach(), t64.grad.reshape(B * K, d), scale, dtype), "d_text")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("max_violation", [True, False])
def test_triplet_lowp_vs_float64(backend, dtype, max_violation):
    """Triplet: products of bf16/fp16 values are exact in fp32, selection and hinges fp32."""
    B, d = 40, 24
    a = _feats(B, d, dtype, 11).requires_grad_()
    b = _feats(B, d, dtype, 12).requires_grad_()
    loss = losses.triplet_loss(a, b, max_violation=max_violation, backend=backend)
    loss.backward()
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    ref = losses.triplet_loss(a64, b64, max_violation=max_violation, backend="torch")
    ref.backward()
    assert loss.dtype == torch.float32 and a.grad.dtype == dtype
    assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    # gradients are sums of ±rows of the inputs: exact up to the output rounding to the input dtype
    for g, r in ((a.grad, a64.grad), (b.grad, b64.grad)):
        _check_grad(g, r, UNIT[dtype] * r.abs() + 1e-6 * max(1.0, float(r.abs().max())), "triplet grad")


@pytest.mark.parametrize("dtype", LOWP)
def test_unrounded_inputs_loose_bound(dtype):
    """Against float64 on the unrounded fp32 features: the stated input-rounding bound (2 · scale · 2u)."""
    B, d, scale = 64, 32, 50.0
    img32, txt32 = _feats(B, d, torch.float32, 13), _feats(B, d, torch.float32, 14)
    loss = losses.clip_loss(img32.to(dtype), txt32.to(dtype), scale)
    ref = clip_ref(img32.double(), txt32.double(), scale)
    u = UNIT[dtype] / 2
    assert abs(loss.item() - ref.item()) <= 2 * scale * 2 * u + _loss_tol(ref, scale)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", LOWP)
def test_flash_attention_rule_vs_torch_same_dtype(backend, dtype):
    """Our error against float64 is at most 2x that of plain torch in the same dtype (+ a small floor)."""
    B, d, scale = 96, 48, 30.0
    img = _feats(B, d, dtype, 15).requires_grad_()
    txt = _feats(B, d, dtype, 16).requires_grad_()
    ours = losses.clip_loss(img, txt, scale, backend=backend)
    ours.backward()
    gi = img.grad.clone()
    img.grad = None
    lab = torch.arange(B)
    logits = scale * img @ txt.T  # plain torch in the input dtype
    plain = (F.cross_entropy(logits, lab) + F.cross_entropy(logits.T, lab)) / 2
    plain.backward()
    i64 = img.detach().double().requires_grad_()
    ref = clip_ref(i64, txt.detach().double(), scale)
    ref.backward()
    floor = 1e-6 * scale
    assert abs(ours.item() - ref.item()) <= 2 * abs(plain.float().item() - ref.item()) + floor + 1e-5
    assert (gi.double() - i64.grad).abs().max() <= 2 * (img.grad.double() - i64.grad).abs().max() + floor


def test_autocast_bf16_runs_the_bf16_path():
    """Under torch.autocast('cpu', bfloat16) fp32 features are cast to bf16 (the documented policy); gradients come
    back in fp32 (each input's own dtype); the loss equals the bf16 loss on the cast values."""
    B, d = 70, 64
    img, txt = _feats(B, d, torch.float32, 17).requires_grad_(), _feats(B, d, torch.float32, 18).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = losses.clip_loss(img, txt, 20.0)
    loss.backward()
    assert loss.dtype == torch.float32 and img.grad.dtype == torch.float32
    direct = losses.clip_loss(img.detach().bfloat16(), txt.detach().bfloat16(), 20.0)
    assert loss.item() == direct.item()


# ---------------------------------------------------------------------------------------------------------------
# Triton (interpreter on CPU: fp16 only, the interpreter's bf16 dot is wrong) and the GPU backends on a device
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.triton),
                                     pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("M,N,d", [(5, 7, 3), (70, 33, 17)])
def test_gpu_backends_lowp_contract(backend, dtype, M, N, d):
    dev = device_of(backend)
    if dev.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 tl.dot wrongly; bf16 Triton is checked on a GPU")
    scale = 20.0
    x, y = _feats(M, d, dtype, 19), _feats(N, d, dtype, 20)
    xd, yd, sd = x.double(), y.double(), torch.tensor(scale, dtype=torch.float64)
    ref = C.contrastive_forward_torch(xd, yd, sd, 0, 1, 0, 1, True)
    fwd = dispatch.host(C.HOST, backend, "contrastive_forward")
    bwd = dispatch.host(C.HOST, backend, "contrastive_backward")
    out = fwd(x.to(dev), y.to(dev), torch.tensor(scale, device=dev), 0, 1, 0, 1, True)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.cpu().double(), r, rtol=1e-5, atol=2e-6 * scale)
    rc, cc = torch.full((M,), 0.5 / M, dtype=torch.float64), torch.full((N,), 0.5 / N, dtype=torch.float64)
    bref = C.contrastive_backward_torch(xd, yd, sd, ref[0], ref[1], rc, cc, 1.0 / M, 0, 1, 0, 1)
    got = bwd(x.to(dev), y.to(dev), torch.tensor(scale, device=dev), ref[0].float().to(dev), ref[1].float().to(dev),
              rc.float().to(dev), cc.float().to(dev), 1.0 / M, 0, 1, 0, 1)
    z = scale * xd @ yd.T
    dz = rc[:, None] * torch.exp(z - ref[0][:, None]) + cc[None, :] * torch.exp(z - ref[1][None, :]) \
        - (1.0 / M) * torch.eye(M, N, dtype=torch.float64)
    _check_grad(got[0].cpu(), bref[0], _grad_bound(dz, yd, bref[0], scale, dtype), "dx")
    _check_grad(got[1].cpu(), bref[1], _grad_bound(dz.T, xd, bref[1], scale, dtype), "dy")


@pytest.mark.parametrize("n,d", [(2, 3), (70, 24), (300, 100)])
@pytest.mark.parametrize("max_violation", [True, False])
def test_blas_bf16_triplet_forward_contract(n, d, max_violation):
    """The bf16 GEMM triplet forward: the float64 hardest negatives (indices equal) and costs on the same values."""
    if not _lowp_status()[0]:
        pytest.skip(_lowp_status()[1])
    from ccr_fast.backends.blas import triplet as BT

    a, b = _feats(n, d, torch.bfloat16, 21), _feats(n, d, torch.bfloat16, 22)
    out = BT.triplet_forward(a, b, 0.2, max_violation)
    ref = BT.triplet_forward(a.double(), b.double(), 0.2, max_violation)
    assert out[0].dtype == torch.float32
    for o, r in zip(out[:2], ref[:2]):  # per-anchor costs: fp32 accumulation of up to n hinges
        torch.testing.assert_close(o.double(), r, rtol=1e-5, atol=1e-6 * n)
    assert torch.equal(out[2], ref[2]) and torch.equal(out[3], ref[3])

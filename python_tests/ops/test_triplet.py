"""VSE++ triplet op family: CPU kernels and custom op vs the float64 plain-torch reference.

Covers both modes (max-violation, sum of violations), forward costs and hardest-negative indices (ties -> lower
index), gradients (against autograd of the reference and by gradcheck), fp16/bf16/non-contiguous inputs, the
hand-computed cases (two orthonormal pairs, one swapped pair), documented errors and opcheck of the custom op.
"""
import pytest
import torch
import torch.nn.functional as F

from ccr_fast.backends.cpu import triplet as CPU
from ccr_fast.ops import triplet as T


def _pair(B, d, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(B, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    b = F.normalize(torch.randn(B, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    return a, b


# B=70 spans several row blocks (16) and column tiles (64) of the kernel; d=31/65 exercise the dot tail.
SHAPES = [(2, 3), (7, 31), (70, 65)]


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("B,d", SHAPES)
def test_forward_backward_match_reference_fp64(B, d, max_violation):
    a, b = _pair(B, d)
    ref = T.triplet_forward_torch(a, b, 0.2, max_violation)
    got = CPU.triplet_forward(a, b, 0.2, max_violation)
    torch.testing.assert_close(got[0], ref[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got[1], ref[1], atol=1e-12, rtol=1e-12)
    assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])
    da_r, db_r = T.triplet_backward_torch(a, b, 0.2, max_violation, ref[2], ref[3], 1.7)
    da, db = CPU.triplet_backward(a, b, 0.2, max_violation, got[2], got[3], 1.7)
    torch.testing.assert_close(da, da_r, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(db, db_r, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_public_loss_and_grads_cpu_vs_torch_fp32(max_violation, reduction):
    a, b = _pair(33, 20, torch.float32, seed=1)
    outs = {}
    for backend in ("cpu", "torch"):
        a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = T.triplet_loss(a_, b_, margin=0.3, max_violation=max_violation, reduction=reduction, backend=backend)
        loss.backward()
        assert loss.dtype == torch.float32 and loss.dim() == 0
        outs[backend] = (loss.detach(), a_.grad, b_.grad)
    # fp64 oracle
    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    r, c, _, _ = T.triplet_forward_torch(a64, b64, 0.3, max_violation)
    loss64 = (r.sum() + c.sum()) / (33 if reduction == "mean" else 1)
    loss64.backward()
    for backend, (loss, ga, gb) in outs.items():
        torch.testing.assert_close(loss.double(), loss64.detach(), atol=1e-5, rtol=5e-4)
        torch.testing.assert_close(ga.double(), a64.grad, atol=1e-5, rtol=5e-4)
        torch.testing.assert_close(gb.double(), b64.grad, atol=1e-5, rtol=5e-4)


@pytest.mark.parametrize("max_violation", [True, False])
def test_ties_and_duplicates_exact(max_violation):
    # integer-valued data: every score is exact in fp32, so ties are real ties
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-2, 3, (19, 5), generator=gen).float()
    b = torch.randint(-2, 3, (19, 5), generator=gen).float()
    a[7] = a[2]
    a[11] = a[2]
    b[5] = b[1]
    ref = T.triplet_forward_torch(a.double(), b.double(), 1.0, max_violation)
    got = CPU.triplet_forward(a, b, 1.0, max_violation)
    assert torch.equal(got[0].double(), ref[0]) and torch.equal(got[1].double(), ref[1])
    assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])
    if max_violation:  # each hardest negative is the lowest index among the maximal scores
        s = b.double() @ a.double().T
        s.fill_diagonal_(float("-inf"))
        for i in range(19):
            assert got[2][i] == (s[i] == s[i].max()).nonzero()[0, 0]
            assert got[3][i] == (s[:, i] == s[:, i].max()).nonzero()[0, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    a, b = _pair(12, 24, dtype, seed=4)
    a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss = T.triplet_loss(a_, b_, backend="cpu")
    loss.backward()
    assert loss.dtype == torch.float32 and a_.grad.dtype == dtype and b_.grad.dtype == dtype
    a32, b32 = a.float().requires_grad_(), b.float().requires_grad_()
    r, c, _, _ = T.triplet_forward_torch(a32, b32, 0.2, True)
    (r.sum() + c.sum()).backward()
    torch.testing.assert_close(loss, (r.sum() + c.sum()).detach(), atol=1e-5, rtol=5e-4)
    torch.testing.assert_close(a_.grad.float(), a32.grad.to(dtype).float(), atol=1e-2, rtol=1e-2)


def test_non_contiguous_inputs():
    a_big, b_big = _pair(10, 40, seed=5)
    a, b = a_big[:, ::2], b_big[:, 1::2]  # column-strided views
    at = a_big[:, :20].T.contiguous().T  # column-major: row stride 1
    for x, y in ((a, b), (at, b)):
        loss = T.triplet_loss(x, y, backend="cpu")
        ref = T.triplet_loss(x.contiguous(), y.contiguous(), backend="torch")
        torch.testing.assert_close(loss, ref, atol=1e-12, rtol=1e-12)
    # row-strided view (passed to the kernel as is, with its row stride)
    rows = a_big[:, :16]
    assert rows.stride(0) == 40
    torch.testing.assert_close(T.triplet_loss(rows, b_big[:, :16], backend="cpu"),
                               T.triplet_loss(rows.contiguous(), b_big[:, :16].contiguous(), backend="torch"))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("max_violation", [True, False])
def test_gradcheck_fp64(backend, max_violation):
    a, b = _pair(5, 7, seed=6)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def f(x, y):
        return T.triplet_loss(x, y, margin=0.5, max_violation=max_violation, reduction="mean", backend=backend)

    assert torch.autograd.gradcheck(f, (a, b), eps=1e-6, atol=1e-6)


def test_appendix_e1_cases():
    e = torch.eye(4, dtype=torch.float64)
    a, b = e[:2, :2].clone(), e[:2, :2].clone()  # N=2 orthonormal pairs on the diagonal
    for backend in ("cpu", "torch"):
        assert T.triplet_loss(a, b, margin=0.2, backend=backend).item() == 0.0
        # swapping one pair: S = [[0, 1], [1, 0]], every hinge is 0.2 + 1 - 0 = 1.2, four hinges
        swapped = b.flip(0)
        assert T.triplet_loss(a, swapped, margin=0.2, backend=backend).item() == pytest.approx(4.8)
        assert T.triplet_loss(a, swapped, margin=0.2, max_violation=False, backend=backend).item() == pytest.approx(4.8)
    # 'sum' scales linearly with N: S_ii = 0.1, S_ij = 0, each of the 2N hinges is 0.2 - 0.1
    for n in (2, 5, 9):
        eye = torch.eye(2 * n, dtype=torch.float64)
        a = eye[:n]
        b = 0.1 * eye[:n] + (0.99 ** 0.5) * eye[n:]
        for backend in ("cpu", "torch"):
            assert T.triplet_loss(a, b, backend=backend).item() == pytest.approx(0.2 * n)
            assert T.triplet_loss(a, b, reduction="mean", backend=backend).item() == pytest.approx(0.2)


def test_deterministic():
    a, b = _pair(50, 33, torch.float32, seed=7)
    for mv in (True, False):
        x = CPU.triplet_forward(a, b, 0.2, mv)
        y = CPU.triplet_forward(a, b, 0.2, mv)
        assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_errors():
    a, b = _pair(4, 3)
    with pytest.raises(ValueError, match="B >= 2"):
        T.triplet_loss(a[:1], b[:1])
    with pytest.raises(ValueError, match="shape"):
        T.triplet_loss(a, b[:3])
    with pytest.raises(ValueError, match="dtype"):
        T.triplet_loss(a, b.float())
    with pytest.raises(ValueError, match="2-D"):
        T.triplet_loss(a[None], b[None])
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        T.triplet_loss(a.tolist(), b)
    with pytest.raises(ValueError, match="dtype"):
        T.triplet_loss(a.long(), b.long())
    with pytest.raises(ValueError, match="reduction"):
        T.triplet_loss(a, b, reduction="none")
    with pytest.raises(TypeError, match="margin"):
        T.triplet_loss(a, b, margin="0.2")
    with pytest.raises(ValueError, match="margin"):
        T.triplet_loss(a, b, margin=float("nan"))
    with pytest.raises(TypeError, match="max_violation"):
        T.triplet_loss(a, b, max_violation=1)
    with pytest.raises(ValueError, match="backend"):
        T.triplet_loss(a, b, backend="gpu")
    with pytest.raises(RuntimeError, match="cuda"):
        T.triplet_loss(a, b, backend="cuda")
    with pytest.raises(ValueError, match="row_idx"):  # the kernel validates the saved indices
        CPU.triplet_backward(a, b, 0.2, True, torch.arange(4), torch.tensor([1, 0, 0, 0]), 1.0)


def test_opcheck():
    a, b = _pair(6, 5, seed=8)
    a.requires_grad_(True)
    b.requires_grad_(True)
    torch.library.opcheck(torch.ops.ccr_fast.triplet_fwd.default, (a, b, 0.2, True, "cpu"))


# ---------------------------------------------------------------------------------------------------------------
# Conformance: every backend's host functions against the float64 reference
# ---------------------------------------------------------------------------------------------------------------

from _backends import CONTRACT_BACKENDS, device_of  # noqa: E402
from ccr_fast.ops import dispatch  # noqa: E402


@pytest.mark.parametrize("backend", CONTRACT_BACKENDS)
@pytest.mark.parametrize("B,d", [(2, 1), (5, 3), (33, 17), (130, 8)])
@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_contract_every_backend(backend, B, d, max_violation, dtype):
    dev = device_of(backend)
    gen = torch.Generator().manual_seed(B * 100 + d)
    a = torch.randint(-2, 3, (B, d), generator=gen).double()  # integer values: exact scores, real ties
    b = torch.randint(-2, 3, (B, d), generator=gen).double()
    ref = T.triplet_forward_torch(a, b, 0.5, max_violation)
    fwd = dispatch.host(T.HOST, backend, "triplet_forward")
    bwd = dispatch.host(T.HOST, backend, "triplet_backward")
    out = fwd(a.to(dtype).to(dev), b.to(dtype).to(dev), 0.5, max_violation)
    torch.testing.assert_close(out[0].cpu().double(), ref[0])
    torch.testing.assert_close(out[1].cpu().double(), ref[1])
    if max_violation:  # ties -> lower index, exactly
        assert torch.equal(out[2].cpu(), ref[2]) and torch.equal(out[3].cpu(), ref[3])
    da, db = bwd(a.to(dtype).to(dev), b.to(dtype).to(dev), 0.5, max_violation, out[2], out[3], 1.5)
    rda, rdb = T.triplet_backward_torch(a, b, 0.5, max_violation, ref[2], ref[3], 1.5)
    torch.testing.assert_close(da.cpu().double(), rda)
    torch.testing.assert_close(db.cpu().double(), rdb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blas_forward_on_random_data(dtype):
    a, b = torch.randn(300, 33, dtype=dtype), torch.randn(300, 33, dtype=dtype)
    for mv in (True, False):
        ref = T.triplet_forward_torch(a.double(), b.double(), 0.2, mv)
        out = T.triplet_forward(a, b, 0.2, mv, backend="blas")
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(out[0].double(), ref[0], rtol=tol, atol=tol)
        torch.testing.assert_close(out[1].double(), ref[1], rtol=tol, atol=tol)
        if mv:
            assert torch.equal(out[2], ref[2]) and torch.equal(out[3], ref[3])

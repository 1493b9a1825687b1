"""Sigmoid (SigLIP) op family and ccr_fast.losses.sigmoid_loss / SigLipLoss vs float64 dense references.

Covers: the kernel contract on every backend (forced small tiles, k > 1, offsets, negatives-only blocks, no-grad
calls), the public loss on random and edge shapes ([B, d] and [B, K, d]) for values and the gradients of both
features, logit_scale and logit_bias, open_clip's SigLipLoss (loaded from its file when installed), fp16/bf16
inputs, large logits and duplicates, fp64 gradcheck, torch.compile(fullgraph=True), opcheck, bad input, the memory
bound in a subprocess and two gloo processes whose mean loss equals the full-batch loss (every exchange mode).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _backends import BACKENDS, CONTRACT_BACKENDS, device_of
from _contrastive_ref import assert_close_fa
from ccr_fast import losses
from ccr_fast.ops import sigmoid as S


def siglip_ref(img, txt, scale, bias):
    """The SigLIP loss written out literally in float64: txt [B, d] or [B, K, d] (image-major)."""
    B = img.shape[0]
    t = txt.reshape(-1, txt.shape[-1]).double()
    K = t.shape[0] // B
    logits = scale * img.double() @ t.T + bias
    labels = 2 * torch.eye(B, dtype=torch.float64).repeat_interleave(K, dim=1) - 1
    return -F.logsigmoid(labels * logits).sum() / B


def _feats(*shape, dtype=torch.float32):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).to(dtype)


def _ref_grads(img, txt, scale, bias):
    leaves = [img.detach().double().requires_grad_(), txt.detach().double().requires_grad_(),
              torch.tensor(float(scale), dtype=torch.float64, requires_grad=True),
              torch.tensor(float(bias), dtype=torch.float64, requires_grad=True)]
    loss = siglip_ref(*leaves)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


def _our_grads(img, txt, scale, bias, backend, dtype=None):
    dtype = dtype or img.dtype
    leaves = [img.detach().to(dtype).requires_grad_(), txt.detach().to(dtype).requires_grad_(),
              torch.tensor(float(scale), requires_grad=True), torch.tensor(float(bias), requires_grad=True)]
    loss = losses.sigmoid_loss(*leaves, backend=backend)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


# ---------------------------------------------------------------------------------------------------------------
# Kernel contract
# ---------------------------------------------------------------------------------------------------------------

CONTRACT_CASES = [  # M, N, d, k, pos_off, positives
    (5, 5, 3, 1, 0, True),
    (4, 12, 7, 3, 0, True),  # 1-to-K, K=3
    (3, 9, 5, 1, 3, True),  # rows of rank 1 against all gathered texts (b=3)
    (6, 50, 16, 1, 0, False),  # another rank's texts: negatives only
    (37, 41, 33, 1, 0, True),  # odd sizes: tails of every vector loop; columns past M have no positive
    (1, 1, 1, 1, 0, True),
]


@pytest.mark.parametrize("M,N,d,k,pos_off,positives", CONTRACT_CASES)
@pytest.mark.parametrize("backend", CONTRACT_BACKENDS)
def test_contract_vs_float64(M, N, d, k, pos_off, positives, backend):
    dev = device_of(backend)
    x, y = torch.randn(M, d, device=dev), torch.randn(N, d, device=dev)
    scale, bias = torch.tensor(3.0, device=dev), torch.tensor(-2.0, device=dev)
    args = (k, pos_off, positives, 1.0 / M)
    ref = S.sigmoid_forward_torch(x.double(), y.double(), scale.double(), bias.double(), *args, True)
    base = S.sigmoid_forward_torch(x, y, scale, bias, *args, True)  # plain fp32 torch
    tiles = [{}] + ([{"tile_m": 2, "tile_n": 3}, {"tile_m": 1, "tile_n": 1}] if backend in ("cpu", "blas") else [])
    for kw in tiles:
        out = S.sigmoid_forward(x, y, scale, bias, *args, True, backend=backend) if not kw else \
            S.dispatch.host(S.HOST, backend, "sigmoid_forward", x.device)(x, y, scale, bias, *args, True, **kw)
        for o, r, b, name in zip(out, ref, base, ("loss", "dx", "dy", "dscale", "dbias")):
            assert o.dtype == torch.float32 and o.shape == r.shape, name
            floor = 2e-6 * max(1.0, r.abs().max().item())  # fp32 rounding of the largest entry
            assert_close_fa(o.cpu(), r.cpu(), b.cpu(), floor=floor, what=f"{backend} {kw} {name}")
    no_grad = S.sigmoid_forward(x, y, scale, bias, *args, False, backend=backend)
    assert no_grad[1].numel() == 0 and no_grad[2].numel() == 0
    torch.testing.assert_close(no_grad[0].double().cpu(), ref[0].cpu(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["cpu", "blas"])
def test_contract_float64(backend):
    for M, N, d, k, pos_off, positives in CONTRACT_CASES:
        x, y = torch.randn(M, d, dtype=torch.float64), torch.randn(N, d, dtype=torch.float64)
        scale, bias = torch.tensor(4.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
        args = (k, pos_off, positives, 0.5, True)
        ref = S.sigmoid_forward_torch(x, y, scale, bias, *args)
        out = S.dispatch.host(S.HOST, backend, "sigmoid_forward", x.device)(x, y, scale, bias, *args, tile_m=2,
                                                                             tile_n=3)
        for o, r in zip(out, ref):
            assert o.dtype == torch.float64
            torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("rows", [1, 2, 0])
def test_chunked_torch_loop_of_blas_on_cuda(rows):
    """The cuBLAS row-chunk loop of blas on CUDA (backends/blas/sigmoid_gpu.py), run here on CPU tensors."""
    from ccr_fast.backends.blas.sigmoid import chunked

    for M, N, d, k, pos_off, positives in CONTRACT_CASES:
        x, y = torch.randn(M, d), torch.randn(N, d)
        scale, bias = torch.tensor(3.0), torch.tensor(-2.0)
        args = (k, pos_off, positives, 1.0 / M, True)
        ref = S.sigmoid_forward_torch(x.double(), y.double(), scale.double(), bias.double(), *args)
        base = S.sigmoid_forward_torch(x, y, scale, bias, *args)
        for o, r, b in zip(chunked(x, y, scale, bias, *args, rows=rows), ref, base):
            assert_close_fa(o, r, b, floor=2e-6 * max(1.0, r.abs().max().item()), what=f"rows={rows}")


@pytest.mark.parametrize("M,N,d,k,pos_off,positives", CONTRACT_CASES + [(70, 140, 130, 2, 1, True)])
def test_blas_bf16_gemm_path(M, N, d, k, pos_off, positives):
    """bf16 CPU operands through the bf16 GEMM (bf16 products, fp32 accumulation): the scores are exact in fp32, so
    loss, dscale and dbias hold fp32 accuracy; dx, dy carry the one bf16 rounding of G (2^-8 relative)."""
    from ccr_fast.backends.blas import _lowp
    from ccr_fast.backends.blas import sigmoid as blas_sigmoid

    if not _lowp.available():
        pytest.skip(f"no bf16 GEMM here: {_lowp.status()[1]}")
    x, y = torch.randn(M, d).bfloat16(), torch.randn(N, d).bfloat16()
    scale, bias = torch.tensor(3.0), torch.tensor(-2.0)
    args = (k, pos_off, positives, 1.0 / M)
    ref = S.sigmoid_forward_torch(x.double(), y.double(), scale.double(), bias.double(), *args, True)
    for tiles in ((0, 0), (64, 64)):
        out = blas_sigmoid.sigmoid_forward(x, y, scale, bias, *args, True, tile_m=tiles[0], tile_n=tiles[1])
        for o, r, name in zip(out, ref, ("loss", "dx", "dy", "dscale", "dbias")):
            assert o.dtype == torch.float32 and o.shape == r.shape, name
            tol = 2e-6 if name in ("loss", "dscale", "dbias") else 2 ** -7
            torch.testing.assert_close(o.double(), r, rtol=0, atol=tol * max(1.0, r.abs().max().item()), msg=name)
    no_grad = blas_sigmoid.sigmoid_forward(x, y, scale, bias, *args, False)
    torch.testing.assert_close(no_grad[0].double(), ref[0], rtol=2e-6, atol=2e-6)


def test_extension_rejects_bad_arguments():
    from ccr_fast.backends.registry import extension

    ext = extension()
    x, out = torch.randn(2, 3), torch.empty(3)
    with pytest.raises(ValueError, match="float32 or float64"):
        ext.sigmoid_forward_cpu(x.data_ptr(), x.data_ptr(), 2, 2, 3, 3, 3, 2, 1.0, 0.0, 1, 0, True, 1.0, False,
                                out.data_ptr(), 0, 0, 0)
    with pytest.raises(ValueError, match="k"):
        ext.sigmoid_forward_cpu(x.data_ptr(), x.data_ptr(), 2, 2, 3, 3, 3, 0, 1.0, 0.0, 0, 0, True, 1.0, False,
                                out.data_ptr(), 0, 0, 0)
    with pytest.raises(ValueError, match="need_grad"):
        ext.sigmoid_forward_cpu(x.data_ptr(), x.data_ptr(), 2, 2, 3, 3, 3, 0, 1.0, 0.0, 1, 0, True, 1.0, True,
                                out.data_ptr(), 0, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Public loss: values and gradients vs float64
# ---------------------------------------------------------------------------------------------------------------

SHAPES = [  # B, K (None: [B, d] texts), d
    (1, None, 5), (2, None, 1), (7, None, 31), (97, None, 64), (6, 1, 8), (5, 4, 16), (33, 3, 7),
]


@pytest.mark.parametrize("B,K,d", SHAPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_values_and_grads_vs_float64(B, K, d, backend):
    img = _feats(B, d)
    txt = _feats(B, d) if K is None else _feats(B, K, d)
    for scale, bias in ((10.0, -10.0), (3.0, 0.5), (100.0, -10.0)):
        ref, ref_g = _ref_grads(img, txt, scale, bias)
        out, g = _our_grads(img, txt, scale, bias, backend)
        base, base_g = _our_grads(img, txt, scale, bias, "torch")  # plain fp32 torch, same formula
        assert out.dtype == torch.float32 and out.shape == ()
        assert_close_fa(out, ref, base, floor=1e-6 * max(1.0, abs(float(ref))), what=f"loss s={scale}")
        for o, r, b, name in zip(g, ref_g, base_g, ("img", "txt", "scale", "bias")):
            assert o.shape == r.shape and o.dtype == torch.float32, name
            assert_close_fa(o, r, b, floor=2e-6 * max(1.0, r.abs().max().item()),
                            what=f"{backend} grad {name} s={scale}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_inputs_exact(backend):
    img, txt = _feats(9, 12, dtype=torch.float64), _feats(9, 2, 12, dtype=torch.float64)
    ref, ref_g = _ref_grads(img, txt, 7.0, -4.0)
    leaves = [img.clone().requires_grad_(), txt.clone().requires_grad_(),
              torch.tensor(7.0, dtype=torch.float64, requires_grad=True),
              torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)]
    loss = losses.sigmoid_loss(*leaves, backend=backend)
    loss.backward()
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    for t, r in zip(leaves, ref_g):
        torch.testing.assert_close(t.grad, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_and_large_logits(backend):
    """Identical rows (ties) and |Z| up to ~110: finite, equal to the float64 reference."""
    img = _feats(1, 16).repeat(6, 1)
    txt = torch.cat([img[:3], -img[:3]])
    ref, ref_g = _ref_grads(img, txt, 100.0, -10.0)
    out, g = _our_grads(img, txt, 100.0, -10.0, backend)
    assert torch.isfinite(out) and all(torch.isfinite(t).all() for t in g)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    for o, r in zip(g, ref_g):
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("the Triton interpreter computes bf16 dots wrongly (triton#11584)")
    dev = device_of(backend)
    img, txt = _feats(13, 24, dtype=dtype).to(dev), _feats(13, 2, 24, dtype=dtype).to(dev)
    # reference on the rounded inputs: a low-precision GEMM with fp32 accumulation is exact up to fp32 rounding
    ref, ref_g = _ref_grads(img.cpu(), txt.cpu(), 10.0, -10.0)
    leaves = [img.clone().requires_grad_(), txt.clone().requires_grad_(),
              torch.tensor(10.0, device=dev, requires_grad=True), torch.tensor(-10.0, device=dev, requires_grad=True)]
    loss = losses.sigmoid_loss(*leaves, backend=backend)
    loss.backward()
    assert loss.dtype == torch.float32
    assert leaves[0].grad.dtype == dtype and leaves[1].grad.dtype == dtype
    torch.testing.assert_close(loss.double().cpu(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(leaves[2].grad.double().cpu(), ref_g[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(leaves[3].grad.double().cpu(), ref_g[3], rtol=1e-4, atol=1e-5)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # the gradients are rounded to the input dtype
    for t, r in zip(leaves[:2], ref_g[:2]):
        torch.testing.assert_close(t.grad.double().cpu(), r, rtol=tol, atol=tol * r.abs().max().item())


def test_no_grad_and_plain_numbers():
    img, txt = _feats(8, 6), _feats(8, 6)
    ref = siglip_ref(img, txt, 5.0, -1.0)
    with torch.no_grad():
        for backend in ("cpu", "blas"):
            torch.testing.assert_close(losses.sigmoid_loss(img, txt, 5.0, -1.0, backend=backend).double(), ref,
                                       rtol=1e-5, atol=1e-6)
    # logit_bias=None: no bias (open_clip's get_logits)
    torch.testing.assert_close(losses.sigmoid_loss(img, txt, 5.0, None, backend="cpu").double(),
                               siglip_ref(img, txt, 5.0, 0.0), rtol=1e-5, atol=1e-6)


def test_auto_picks_blas_for_large_batches():
    from ccr_fast.ops import dispatch

    assert dispatch.resolve("sigmoid", "auto", torch.device("cpu"), torch.float32, work=4096 * 4096) == "blas"
    assert dispatch.resolve("sigmoid", "auto", torch.device("cpu"), torch.float32, work=16 * 16) == "cpu"
    with pytest.raises(RuntimeError, match="sigmoid"):
        dispatch.resolve("sigmoid", "cuda", torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# open_clip's SigLipLoss (loaded from its file: `import open_clip` needs torchvision)
# ---------------------------------------------------------------------------------------------------------------


def _open_clip_loss_module():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss_for_tests", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_open_clip(backend):
    oc = _open_clip_loss_module()
    for B, d in ((1, 4), (16, 32), (45, 64)):
        img, txt = _feats(B, d), _feats(B, d)
        ref_leaves = [img.clone().requires_grad_(), txt.clone().requires_grad_(),
                      torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)]
        ref = oc.SigLipLoss()(*ref_leaves)
        ref.backward()
        leaves = [t.detach().clone().requires_grad_() for t in ref_leaves]
        ours = losses.SigLipLoss(backend=backend)(*leaves, output_dict=True)["contrastive_loss"]
        ours.backward()
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(leaves, ref_leaves):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_module_constructor_and_helpers():
    m = losses.SigLipLoss()
    assert (m.cache_labels, m.rank, m.world_size, m.dist_impl) == (False, 0, 1, "bidir")
    labels = m.get_ground_truth(torch.device("cpu"), torch.float32, 3)
    assert torch.equal(labels, 2 * torch.eye(3) - 1)
    assert torch.equal(m.get_ground_truth("cpu", torch.float32, 2, negative_only=True), -torch.ones(2, 2))
    for impl in ("bidir", "shift", "reduce", "gather"):
        assert losses.SigLipLoss(rank=1, world_size=2, dist_impl=impl).dist_impl == impl
    with pytest.raises(ValueError, match="dist_impl"):
        losses.SigLipLoss(dist_impl="ring")
    with pytest.raises(ValueError, match="rank"):
        losses.SigLipLoss(rank=2, world_size=2)
    with pytest.raises(TypeError, match="cache_labels"):
        losses.SigLipLoss(cache_labels="yes")
    with pytest.raises(RuntimeError, match="process group"):
        losses.SigLipLoss(rank=0, world_size=2)(_feats(2, 3), _feats(2, 3), 1.0, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# gradcheck, compile, opcheck
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [None, 3])
def test_gradcheck_fp64(backend, K):
    img = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    shape = (4, 5) if K is None else (4, K, 5)
    txt = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s, c: losses.sigmoid_loss(a, b, s, c, backend=backend),
                                    (img, txt, scale, bias))


@pytest.mark.parametrize("backend", ["cpu", "blas", "auto"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b, s, c: losses.sigmoid_loss(a, b, s, c, backend=backend), fullgraph=True)
    img, txt = _feats(6, 8), _feats(6, 2, 8)
    leaves = [img.clone().requires_grad_(), txt.clone().requires_grad_(), torch.tensor(4.0, requires_grad=True),
              torch.tensor(-2.0, requires_grad=True)]
    loss = fn(*leaves)
    loss.backward()
    ref, ref_g = _ref_grads(img, txt, 4.0, -2.0)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    for t, r in zip(leaves, ref_g):
        torch.testing.assert_close(t.grad.double(), r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "blas"])
@pytest.mark.parametrize("need_grad", [True, False])
def test_opcheck(backend, need_grad):
    x, y = torch.randn(5, 7, requires_grad=True), torch.randn(10, 7, requires_grad=True)
    s, b = torch.tensor(3.0, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    torch.library.opcheck(torch.ops.ccr_fast.sigmoid_fwd.default, (x, y, s, b, 2, 0, True, 0.2, need_grad, backend))
    torch.library.opcheck(torch.ops.ccr_fast.sigmoid_fwd.default, (x, y, s, b, 2, 1, False, 0.2, need_grad, backend))


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def _bad_cases():
    img, txt = _feats(4, 3), _feats(4, 3)
    s, b = torch.tensor(2.0), torch.tensor(-1.0)
    return [
        ((img.numpy(), txt, s, b), TypeError, "image_features"),
        ((img, [1.0], s, b), TypeError, "text_features"),
        ((img[0], txt, s, b), ValueError, "image_features"),
        ((img, txt[None, None], s, b), ValueError, "text_features"),
        ((img, txt[:3], s, b), ValueError, "text_features.*batch"),
        ((img, _feats(4, 5), s, b), ValueError, "text_features.*feature size"),
        ((img, txt.double(), s, b), ValueError, "text_features.*dtype"),
        ((img.long(), txt.long(), s, b), ValueError, "image_features.*dtype"),
        ((img[:0], txt[:0], s, b), ValueError, "non-empty"),
        ((img, torch.empty(4, 0, 3), s, b), ValueError, "K >= 1"),
        ((img, txt, torch.tensor([1.0, 2.0]), b), ValueError, "logit_scale"),
        ((img, txt, float("nan"), b), ValueError, "logit_scale"),
        ((img, txt, s, torch.tensor(float("nan"))), ValueError, "logit_bias"),
        ((img, txt, s, float("inf")), ValueError, "logit_bias"),
        ((img, txt, s, "0"), TypeError, "logit_bias"),
        ((img, txt, s, torch.tensor(1)), ValueError, "logit_bias"),
        ((img, txt, True, b), TypeError, "logit_scale"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input(case):
    args, exc, pattern = _bad_cases()[case]
    with pytest.raises(exc, match=pattern):
        losses.sigmoid_loss(*args)
    with pytest.raises(exc, match=pattern):
        losses.SigLipLoss()(*args)


def test_bad_backend_and_devices():
    img, txt = _feats(4, 3), _feats(4, 3)
    with pytest.raises(ValueError, match="backend"):
        losses.sigmoid_loss(img, txt, 1.0, 0.0, backend="fast")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            losses.sigmoid_loss(img, txt.cuda(), 1.0, 0.0)
        with pytest.raises(ValueError, match="logit_bias"):
            losses.sigmoid_loss(img, txt, 1.0, torch.tensor(0.0, device="cuda"))


# ---------------------------------------------------------------------------------------------------------------
# Memory: O(B·d), measured in a fresh process
# ---------------------------------------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from ccr_fast import losses
    torch.manual_seed(0)
    N, d, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # warm-up at a small size (libraries, thread pools), then the inputs
    w = torch.randn(64, d, requires_grad=True)
    losses.sigmoid_loss(w, w.detach(), 10.0, -10.0, backend=backend).backward()
    x = torch.nn.functional.normalize(torch.randn(N, d), dim=-1).requires_grad_()
    y = torch.nn.functional.normalize(torch.randn(N, d), dim=-1).requires_grad_()
    s, b = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    before = peak()
    loss = losses.sigmoid_loss(x, y, s, b, backend=backend)
    loss.backward()
    print(json.dumps({"growth": peak() - before, "loss": float(loss)}))
""")


def _peak_growth(backend: str, N: int = 16384, d: int = 64) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(losses.__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(N), str(d), backend], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_memory_bound_n16384(backend):
    """At N=16384, d=64 the B×B logits alone would be 1 GiB (fp32): peak RSS may grow < 256 MiB."""
    out = _peak_growth(backend)
    assert out["growth"] < 256 * 2**20, f"peak RSS grew {out['growth'] / 2**20:.0f} MiB"
    assert out["loss"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Two gloo processes: the mean of the rank losses equals the full-batch loss
# ---------------------------------------------------------------------------------------------------------------

WORLD, B_LOCAL, D = 2, 3, 5
IMPLS = ("bidir", "shift", "reduce", "gather")


def _rank_main(rank: int, store_path: str, data_path: str, out_path: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        data = torch.load(data_path)
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        results = {}
        for impl in IMPLS:
            for kind in ("flat", "k"):
                img = data["img"][sl].clone().requires_grad_()
                txt = (data["txt"][sl, 0] if kind == "flat" else data["txt"][sl]).clone().requires_grad_()
                s, b = data["scale"].clone().requires_grad_(), data["bias"].clone().requires_grad_()
                loss = losses.SigLipLoss(rank=rank, world_size=WORLD, dist_impl=impl, backend="cpu")(img, txt, s, b)
                loss.backward()
                results[f"{impl}/{kind}"] = {"loss": loss.detach(), "img": img.grad, "txt": txt.grad,
                                             "scale": s.grad, "bias": b.grad}
        torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_mean_equals_full_batch(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    torch.manual_seed(0)
    data = {"img": _feats(WORLD * B_LOCAL, D), "txt": _feats(WORLD * B_LOCAL, 2, D),
            "scale": torch.tensor(10.0), "bias": torch.tensor(-10.0)}
    data_path = tmp_path / "data.pt"
    torch.save(data, data_path)
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"rank{r}.pt" for r in range(WORLD)]
    procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "store"), str(data_path), str(outs[r])))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    res = [torch.load(o) for o in outs]
    for kind in ("flat", "k"):
        txt = data["txt"][:, 0] if kind == "flat" else data["txt"]
        ref, ref_g = _ref_grads(data["img"], txt, 10.0, -10.0)
        for impl in IMPLS:
            key = f"{impl}/{kind}"
            mean = sum(r[key]["loss"].double() for r in res) / WORLD
            torch.testing.assert_close(mean, ref, rtol=1e-5, atol=1e-6, msg=key)
            # every rank's loss reaches every text: the rank losses sum to WORLD x the full loss, so each rank's
            # feature gradient is WORLD x the full-batch gradient of its slice (DDP's mean then gives the full one)
            img_g = torch.cat([r[key]["img"] for r in res]).double()
            txt_g = torch.cat([r[key]["txt"] for r in res]).double()
            torch.testing.assert_close(img_g, WORLD * ref_g[0], rtol=1e-4, atol=1e-6, msg=key)
            torch.testing.assert_close(txt_g, WORLD * ref_g[1], rtol=1e-4, atol=1e-6, msg=key)
            for i, name in ((2, "scale"), (3, "bias")):
                torch.testing.assert_close(sum(r[key][name].double() for r in res) / WORLD, ref_g[i], rtol=1e-4,
                                           atol=1e-6, msg=f"{key} {name}")


# ---------------------------------------------------------------------------------------------------------------
# Benchmark pieces (ccr_fast/bench/sigmoid.py)
# ---------------------------------------------------------------------------------------------------------------


def test_benchmark_baseline_formula_and_point():
    from ccr_fast.bench import sigmoid as bench_sigmoid

    img, txt = _feats(9, 8), _feats(9, 8)
    s, b = torch.tensor(10.0), torch.tensor(-10.0)
    torch.testing.assert_close(bench_sigmoid.open_clip_formula(img, txt, s, b).double(),
                               siglip_ref(img, txt, 10.0, -10.0), rtol=1e-5, atol=1e-6)
    seen = {}

    def run_point(name, providers, extra):  # run every provider once; all return the same loss
        seen[name] = {p: fn() for p, fn in providers.items()}
        seen["extra"] = extra

    torch._dynamo.reset()
    bench_sigmoid.sigmoid_point(run_point, 64, d=16)
    out = seen["sigmoid fwd+bwd fp32 N=64"]
    assert {"torch_eager", "torch_compile", "ccr_fast[auto]", "gemm_floor"} <= set(out)
    ref = out["torch_eager"]
    for name, val in out.items():
        if name != "gemm_floor":
            torch.testing.assert_close(val, ref, rtol=1e-5, atol=1e-5, msg=name)
    assert seen["extra"] == {"B": 64, "K": 1, "d": 16, "dtype": "float32"}

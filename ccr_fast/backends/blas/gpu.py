"""The ``blas`` backend on CUDA tensors: cuBLAS GEMMs through ``torch.mm`` plus fused Triton epilogues.

Host functions with the kernel contract of docs/interop.md (``contrastive_forward``, ``contrastive_backward``,
``triplet_forward``, ``triplet_backward``, ``topk``, ``target_ranks``, ``similarity``); ``backends/blas/<family>.py``
calls them for CUDA tensors. Design (docs/gpu.md):

* Scores ``S = A Bᵀ`` are one GEMM per row chunk: fp16/bf16 operands with fp32 accumulation and an **fp32 output**
  (``torch.mm(..., out_dtype=torch.float32)``; where that overload is missing, the GEMM runs on fp32 copies), fp32
  inputs as ``torch.mm`` does them (TF32 exactly when ``torch.backends.cuda.matmul.allow_tf32`` is set).
* Everything around the GEMMs is a memory-bound Triton epilogue (``backends/triton/epilogues.py``) that reads S once:
  row/column LSE with per-block column partials, dZ, hardest negatives, top-k selection, rank counting.
* Row chunks are sized from free device memory (``budget_bytes`` overrides; half of free + cached-but-unused memory
  by default). When the whole score matrix fits, it is one chunk, and the contrastive forward keeps it for the
  backward (a one-entry cache keyed on the operands' storage and version counters, consumed by the backward), which
  then costs the two gradient GEMMs only.
* dZ is formed in fp32 and rounded once to the input dtype (bf16 stays bf16, the GEMM operand); for fp16 it is first
  divided by a power of two ≥ max|coefficient| so that the small softmax terms do not underflow fp16.
* No host synchronisation on the loss path: ``scale`` stays a device tensor, normalisers are device scalars.

The functions also run on CPU tensors under ``TRITON_INTERPRET=1`` (the GEMM then runs in fp32 on the CPU), which is
how the tests check the orchestration and the epilogues without a GPU.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Bytes of scratch (score chunks, dZ) one call may use; None = derived from free device memory (see _budget).
budget_bytes: Optional[int] = None
_CPU_BUDGET = 256 << 20

_MM_OUT_DTYPE: Optional[bool] = None  # whether torch.mm(..., out_dtype=float32) works for fp16/bf16 on CUDA
_cache: dict = {}  # the one kept score matrix of the contrastive forward (see _keep / _take)


def _on_device(fn):
    """Run ``fn`` with the CUDA device of its first tensor argument current (Triton launches on the current one)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if t is not None and t.device.type == "cuda":
            with torch.cuda.device(t.device):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def _ep():
    from ..triton import epilogues  # noqa: PLC0415 - needs triton; imported on first use

    return epilogues


# ------------------------------------------------------------------------------------------------- helpers
def _usable_device(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _operands(names, tensors, same_rows=False):
    """Validate 2-D float operands of one device/dtype with equal feature size (ValueError naming the argument)."""
    t0 = tensors[0]
    for n, t in zip(names, tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{n} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{n} must be a non-empty 2-D tensor [rows, d], got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{n} must have dtype float32, float16 or bfloat16 for backend 'blas' on CUDA, "
                             f"got {t.dtype}")
        if t.device != t0.device or t.dtype != t0.dtype or t.shape[1] != t0.shape[1]:
            raise ValueError(f"{n} must match {names[0]} in device, dtype and d ({t0.device}, {t0.dtype}, "
                             f"d={t0.shape[1]}), got {t.device}, {t.dtype}, shape {tuple(t.shape)}")
        if same_rows and t.shape != t0.shape:
            raise ValueError(f"{n} must have the shape of {names[0]} {tuple(t0.shape)}, got {tuple(t.shape)}")
        if not _usable_device(t):
            raise ValueError(f"{n} must be a CUDA tensor for blas.gpu (or set TRITON_INTERPRET=1), got {t.device}")


def _scale(scale, device) -> torch.Tensor:
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        raise ValueError(f"scale must be a 0-dim float32 tensor, got {scale!r:.60}")
    if scale.device != device:
        raise ValueError(f"scale must be on the device of the features ({device}), got {scale.device}")
    return scale.detach().reshape(()).to(torch.float32).contiguous()


def _vec(name, t, n, device, dtype=torch.float32):
    if not isinstance(t, torch.Tensor) or t.shape != (n,):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a tensor of shape [{n}], got {got}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {t.device}")
    return t.detach().to(dtype).contiguous()


def _budget(device: torch.device) -> int:
    """Scratch bytes for one call: ``budget_bytes`` if set, else half of (free + cached-but-unused) device memory."""
    if budget_bytes is not None:
        return int(budget_bytes)
    if device.type != "cuda":
        return _CPU_BUDGET
    free, _total = torch.cuda.mem_get_info(device)
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(1 << 20, (free + unused) // 2)


def _rows_per_chunk(m: int, bytes_per_row: int, device) -> int:
    return max(1, min(m, _budget(device) // max(1, bytes_per_row)))


def _mm_out_dtype_works(device) -> bool:
    global _MM_OUT_DTYPE
    if _MM_OUT_DTYPE is None:
        try:
            a = torch.ones((16, 16), dtype=torch.bfloat16, device=device)
            _MM_OUT_DTYPE = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE = False
    return _MM_OUT_DTYPE


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with an fp32 result: fp16/bf16 operands on cuBLAS with fp32 accumulation and output."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if a.device.type == "cuda" and _mm_out_dtype_works(a.device):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensors track no version: never cached
        return None


def _key(x, y):
    vx, vy = _version(x), _version(y)
    if vx is None or vy is None:
        return None
    return (x.data_ptr(), vx, tuple(x.shape), x.stride(), x.dtype, x.device,
            y.data_ptr(), vy, tuple(y.shape), y.stride(), y.dtype, y.device)


def clear_cache() -> None:
    """Drop the score matrix kept by the last contrastive forward (it is also dropped by the next call)."""
    _cache.clear()


def _keep(x, y, s):
    key = _key(x, y)
    if key is not None:
        # the operands are referenced so that their storage (part of the key) cannot be reused while kept
        _cache.update(key=key, s=s, refs=(x, y))


def _take(x, y):
    key = _key(x, y)
    s = _cache.get("s") if key is not None and _cache.get("key") == key else None
    _cache.clear()
    return s


# ------------------------------------------------------------------------------------------------- contrastive
@_on_device
def contrastive_forward(x, y, scale, row_off, row_div, col_off, col_div, compute_col):
    """Row/column LSE and positive sums of ``Z = scale · x yᵀ`` (docs/interop.md, contrastive).

    Args:
        x: [M, d], y: [N, d] (fp32/fp16/bf16); scale: 0-dim float32 tensor; the positive rule
            ``(r + row_off) // row_div == (c + col_off) // col_div``; compute_col: also ``lse_col``.

    Returns:
        lse_row [M], lse_col [N] (zeros unless compute_col), pos_row [M], pos_col [N], float32.
    """
    _operands(("x", "y"), (x, y))
    ep = _ep()
    clear_cache()
    m, n = x.shape[0], y.shape[0]
    dev = x.device
    s_scale = _scale(scale, dev)
    lse_row = torch.empty(m, dtype=torch.float32, device=dev)
    pos_row = torch.empty(m, dtype=torch.float32, device=dev)
    pos_col = torch.zeros(n, dtype=torch.float32, device=dev)
    lse_col = None
    rows = _rows_per_chunk(m, 4 * n, dev)
    for r0 in range(0, m, rows):
        xc = x[r0:r0 + rows]
        s = mm(xc, y.t())
        lr, pr, cl, cp = ep.lse_partials(s, s_scale, r0, row_off, row_div, col_off, col_div, compute_col)
        lse_row[r0:r0 + rows] = lr
        pos_row[r0:r0 + rows] = pr
        pos_col += cp.sum(0)
        if compute_col:
            cl = torch.logsumexp(cl, 0)
            lse_col = cl if lse_col is None else torch.logaddexp(lse_col, cl)
        if rows >= m:
            _keep(x, y, s)
    if lse_col is None:
        lse_col = torch.zeros(n, dtype=torch.float32, device=dev)
    return lse_row, lse_col, pos_row, pos_col


def _dz_norm(dtype, row_coef, col_coef, w_pos):
    """(norm, 1/norm) device scalars: a power of two >= max |coefficient| for fp16 (dZ/norm stays in fp16's normal
    range), else 1."""
    dev = row_coef.device
    one = torch.ones((), dtype=torch.float32, device=dev)
    if dtype != torch.float16:
        return one, one
    big = torch.maximum(row_coef.abs().amax(), col_coef.abs().amax()).clamp_min(abs(float(w_pos)))
    norm = torch.where(big > 0, torch.exp2(torch.ceil(torch.log2(big))), one)
    return norm, 1.0 / norm


@_on_device
def contrastive_backward(x, y, scale, lse_row, lse_col, row_coef, col_coef, w_pos, row_off, row_div, col_off,
                         col_div):
    """``dx = scale·dZ y``, ``dy = scale·dZᵀ x``, ``dscale = Σ dZ ⊙ x yᵀ = ⟨x, dZ y⟩`` (docs/interop.md).

    ``dZ = row_coef·exp(Z − lse_row) + col_coef·exp(Z − lse_col) − w_pos·[pos]``, written per row chunk in the input
    dtype and fed to two GEMMs. Returns dx [M, d], dy [N, d], dscale 0-dim, float32.
    """
    _operands(("x", "y"), (x, y))
    ep = _ep()
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    dev = x.device
    s_scale = _scale(scale, dev)
    lse_row = _vec("lse_row", lse_row, m, dev)
    lse_col = _vec("lse_col", lse_col, n, dev)
    row_coef = _vec("row_coef", row_coef, m, dev)
    col_coef = _vec("col_coef", col_coef, n, dev)
    kept = _take(x, y)
    norm, inv = _dz_norm(x.dtype, row_coef, col_coef, w_pos)
    dx = torch.empty((m, d), dtype=torch.float32, device=dev)
    dy = torch.zeros((n, d), dtype=torch.float32, device=dev)
    dscale = torch.zeros((), dtype=torch.float32, device=dev)
    per_row = n * x.element_size() + (0 if kept is not None else 4 * n)
    rows = _rows_per_chunk(m, per_row, dev)
    for r0 in range(0, m, rows):
        xc = x[r0:r0 + rows]
        s = kept[r0:r0 + rows] if kept is not None else mm(xc, y.t())
        dz = torch.empty(s.shape, dtype=x.dtype, device=dev)
        ep.dz(s, dz, s_scale, lse_row[r0:r0 + rows], lse_col, row_coef[r0:r0 + rows], col_coef, w_pos, inv, r0,
              row_off, row_div, col_off, col_div)
        del s
        gx = mm(dz, y)  # (dZ/norm) y
        dscale += (xc.float() * gx).sum()
        dx[r0:r0 + rows] = gx
        dy += mm(dz.t(), xc)
    del kept
    f = s_scale * norm
    return dx.mul_(f), dy.mul_(f), dscale * norm


# ------------------------------------------------------------------------------------------------- triplet
def _diag(a, b):
    """``S[i, i] = b_i · a_i`` in fp32 (the diagonal every hinge of forward and backward is measured against)."""
    return (b.float() * a.float()).sum(1)


@_on_device
def triplet_forward(a, b, margin, max_violation):
    """VSE++ costs of ``S = b aᵀ`` (docs/interop.md, triplet).

    Returns:
        row_cost [B], col_cost [B] float32; row_idx [B], col_idx [B] int64 (hardest negatives, lowest index on
        ties; −1 unless max_violation).
    """
    _operands(("a", "b"), (a, b), same_rows=True)
    if a.shape[0] < 2:
        raise ValueError(f"a and b need B >= 2 rows (a negative per anchor), got shape {tuple(a.shape)}")
    from ..triton.topk import decode_keys  # noqa: PLC0415

    ep = _ep()
    n = a.shape[0]
    dev = a.device
    diag = _diag(a, b)
    rows = _rows_per_chunk(n, 4 * n, dev)
    row_res, col_res = [], None
    for r0 in range(0, n, rows):
        s = mm(b[r0:r0 + rows], a.t())
        r, c = ep.hardest(s, diag, float(margin), r0, bool(max_violation))
        row_res.append(r)
        c = c.amax(0) if max_violation else c.sum(0)
        col_res = c if col_res is None else (torch.maximum(col_res, c) if max_violation else col_res + c)
    row_res = torch.cat(row_res)
    if not max_violation:
        idx = torch.full((n,), -1, dtype=torch.int64, device=dev)
        return row_res, col_res, idx, idx.clone()
    row_best, row_idx = decode_keys(row_res)
    col_best, col_idx = decode_keys(col_res)
    row_cost = torch.clamp_min(margin + row_best - diag, 0.0)
    col_cost = torch.clamp_min(margin + col_best - diag, 0.0)
    return row_cost, col_cost, row_idx, col_idx


@_on_device
def triplet_backward(a, b, margin, max_violation, row_idx, col_idx, grad):
    """Gradient of ``grad · Σ (row_cost + col_cost)``: da [B, d], db [B, d] float32 (hinge at exactly 0 → 0).

    Sum of violations: per row chunk the epilogue writes the weights W (0/1/2, exact in the input dtype) and two
    GEMMs give ``db = W a`` and ``da += Wᵀ b_chunk``. Max violation: at most two rows per anchor, O(B·d) in torch.
    """
    _operands(("a", "b"), (a, b), same_rows=True)
    n = a.shape[0]
    dev = a.device
    grad = float(grad)
    diag = _diag(a, b)
    af, bf = a.float(), b.float()
    if max_violation:
        for name, t in (("row_idx", row_idx), ("col_idx", col_idx)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != (n,) or t.device != dev:
                got = f"{t.dtype} {tuple(t.shape)} {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be an int64 tensor of shape [{n}] on {dev}, got {got}")
        a_neg, b_neg = af[row_idx], bf[col_idx]
        act_r = (margin + (bf * a_neg).sum(1) - diag > 0).to(torch.float32)[:, None] * grad
        act_c = (margin + (b_neg * af).sum(1) - diag > 0).to(torch.float32)[:, None] * grad
        db = act_r * (a_neg - af) - act_c * af
        da = act_c * (b_neg - bf) - act_r * bf
        db.index_add_(0, col_idx, act_c * af)
        da.index_add_(0, row_idx, act_r * bf)
        return da, db
    ep = _ep()
    d = a.shape[1]
    da = torch.zeros((n, d), dtype=torch.float32, device=dev)
    db = torch.empty((n, d), dtype=torch.float32, device=dev)
    nact_row = torch.empty(n, dtype=torch.float32, device=dev)
    nact_col = torch.zeros(n, dtype=torch.float32, device=dev)
    rows = _rows_per_chunk(n, n * (4 + a.element_size()), dev)
    for r0 in range(0, n, rows):
        bc = b[r0:r0 + rows]
        s = mm(bc, a.t())
        w = torch.empty(s.shape, dtype=a.dtype, device=dev)
        nr, nc = ep.triplet_weights(s, w, diag, float(margin), r0)
        del s
        nact_row[r0:r0 + rows] = nr
        nact_col += nc.sum(0)
        db[r0:r0 + rows] = mm(w, a)
        da += mm(w.t(), bc)
    n_diag = (nact_row + nact_col)[:, None]  # dS[i, i] = −(row hinges of i + column hinges of i)
    return grad * (da - n_diag * bf), grad * (db - n_diag * af)


# ------------------------------------------------------------------------------------------------- retrieval
@_on_device
def similarity(q, g):
    """``q gᵀ`` [Q, G] float32 (one cuBLAS GEMM, fp32 accumulation and output)."""
    _operands(("q", "g"), (q, g))
    return mm(q, g.t())


@_on_device
def topk(q, g, k, block_size=0):
    """The k highest inner products per query: scores [Q, k] float32 descending, indices [Q, k] int64 (ties → lower
    gallery index). Gallery blocks of ``block_size`` rows (0 = the whole gallery) × row chunks from the budget."""
    _operands(("q", "g"), (q, g))
    n_q, n_g = q.shape[0], g.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_g:
        raise ValueError(f"k must be an int in [1, G={n_g}], got {k!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0:
        raise ValueError(f"block_size must be an int >= 0 (0 = default), got {block_size!r}")
    if n_g >= 2 ** 32 - 1:
        raise ValueError(f"g must have fewer than 2**32 - 1 rows (32-bit index in the packed key), got {n_g}")
    from ..triton.topk import decode_keys, merge_keys, pack_keys  # noqa: PLC0415

    ep = _ep()
    cols = block_size if block_size > 0 else n_g
    in_registers = k <= ep.EPILOGUE_MAX_K
    rows = _rows_per_chunk(n_q, min(cols, n_g) * (4 if in_registers else 12), q.device)
    out = torch.empty((n_q, k), dtype=torch.int64, device=q.device)
    for r0 in range(0, n_q, rows):
        qc = q[r0:r0 + rows]
        best = None
        for c0 in range(0, n_g, cols):
            s = mm(qc, g[c0:c0 + cols].t())
            kc = min(k, s.shape[1])
            keys = ep.topk_partials(s, kc, c0) if kc <= ep.EPILOGUE_MAX_K else pack_keys(s, c0)
            best = merge_keys(best, keys, k)
        out[r0:r0 + rows] = best
    return decode_keys(out)


@_on_device
def target_ranks(q, g, targets):
    """0-based rank of each query's best target (docs/interop.md, ranks): ranks [Q] int64, −1 without a target.

    Each row chunk's scores cover the whole gallery, and the target's score is read from them: the comparison
    never involves a second GEMM's rounding. The range check of ``targets`` syncs once (evaluation only).
    """
    _operands(("q", "g"), (q, g))
    n_q, n_g = q.shape[0], g.shape[0]
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64 or targets.dim() not in (1, 2) \
            or targets.shape[0] != n_q or targets.device != q.device:
        got = (f"{targets.dtype} {tuple(targets.shape)} on {targets.device}" if isinstance(targets, torch.Tensor)
               else type(targets).__name__)
        raise ValueError(f"targets must be int64 of shape [{n_q}] or [{n_q}, T] on {q.device}, got {got}")
    if targets.dim() == 1:
        targets = targets[:, None]
    if targets.shape[1] == 0:
        raise ValueError(f"targets must have at least one column, got shape {tuple(targets.shape)}")
    if bool(((targets < -1) | (targets >= n_g)).any()):
        raise ValueError(f"targets entries must be in [0, G={n_g}) or -1 (padding), got min {int(targets.min())} "
                         f"max {int(targets.max())}")
    if n_g >= 2 ** 31 - 1:
        raise ValueError(f"g must have fewer than 2**31 - 1 rows (int32 counters), got {n_g}")
    ep = _ep()
    targets = targets.contiguous()
    rows = _rows_per_chunk(n_q, 4 * n_g, q.device)
    counts = torch.empty(targets.shape, dtype=torch.int64, device=q.device)
    for r0 in range(0, n_q, rows):
        s = mm(q[r0:r0 + rows], g.t())
        counts[r0:r0 + rows] = ep.rank_counts(s, targets[r0:r0 + rows])
    valid = targets >= 0
    best = torch.where(valid, counts, torch.iinfo(torch.int64).max).min(1).values
    return torch.where(valid.any(1), best, torch.full_like(best, -1))


# ------------------------------------------------------------------------------------------------- exact top-k
def candidate_count(k):
    """k' of the first candidate round of :func:`topk_candidates` (docs/exactness.md)."""
    return 2 * k + 32


@_on_device
def topk_candidates(q, g, kp, block_size=0):
    """bf16 cuBLAS candidates of the exact top-k for fp32 inputs (fp32 accumulation), with their error bound E(q);
    None for other dtypes (``ccr_fast.backends._bf16_candidates``, docs/exactness.md)."""
    from .._bf16_candidates import torch_bf16_candidates  # noqa: PLC0415

    return torch_bf16_candidates(q, g, kp, block_size)


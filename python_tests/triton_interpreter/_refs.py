"""Plain float64 references of the kernel-level contract (docs/interop.md), written independently of ccr_fast.ops."""
from __future__ import annotations

import torch

TOL = {  # inputs are compared on the same (rounded) values, so fp16 inputs are as exact as fp32 ones (fp32 accumulation)
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float16: dict(rtol=1e-4, atol=1e-5),
}


def close(actual, expected, dtype=torch.float32, scale=1.0):
    """assert_close in float64 with the dtype's tolerance; ``scale`` widens atol for large-magnitude outputs."""
    tol = dict(TOL[dtype])
    tol["atol"] = tol["atol"] * scale
    if actual.dtype in (torch.float16, torch.bfloat16):  # results returned in the input dtype: one final rounding
        tol["rtol"] = max(tol["rtol"], 2 * torch.finfo(actual.dtype).eps)
    torch.testing.assert_close(actual.double(), expected.double(), **tol)


def feats(n, d, dtype=torch.float32):
    """L2-normalised random features (normalised in float64, then rounded to ``dtype``)."""
    return torch.nn.functional.normalize(torch.randn(n, d, dtype=torch.float64), dim=-1).to(dtype)


def positive_mask(m, n, row_off, row_div, col_off, col_div):
    r = (torch.arange(m)[:, None] + row_off) // row_div
    c = (torch.arange(n)[None, :] + col_off) // col_div
    return r == c


def contrastive_ref(x, y, scale, row_off, row_div, col_off, col_div, row_coef, col_coef, w_pos):
    """Forward outputs and the contract's backward (dx, dy, dscale) in float64, by autograd of a surrogate whose
    dZ is ``row_coef·softmax_row + col_coef·softmax_col − w_pos·pos``."""
    x = x.double().requires_grad_()
    y = y.double().requires_grad_()
    s = torch.tensor(float(scale), dtype=torch.float64, requires_grad=True)
    z = s * x @ y.t()
    pos = positive_mask(z.shape[0], z.shape[1], row_off, row_div, col_off, col_div)
    lse_row, lse_col = z.logsumexp(1), z.logsumexp(0)
    pos_row, pos_col = (z * pos).sum(1), (z * pos).sum(0)
    surrogate = (row_coef.double() * lse_row).sum() + (col_coef.double() * lse_col).sum() - w_pos * (z * pos).sum()
    surrogate.backward()
    return (lse_row.detach(), lse_col.detach(), pos_row.detach(), pos_col.detach()), (x.grad, y.grad, s.grad)


def triplet_ref(a, b, margin, max_violation, grad=1.0):
    """(row_cost, col_cost, row_idx, col_idx) and (da, db) of ``grad · Σ(row_cost + col_cost)`` in float64."""
    a = a.double().requires_grad_()
    b = b.double().requires_grad_()
    s = b @ a.t()
    n = s.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    diag = s.diagonal()
    if max_violation:
        neg = s.masked_fill(eye, float("-inf"))
        row_idx, col_idx = neg.argmax(1), neg.argmax(0)  # first maximum = lowest index
        row_cost = (margin + neg.max(1).values - diag).clamp(min=0)
        col_cost = (margin + neg.max(0).values - diag).clamp(min=0)
    else:
        row_cost = (margin + s - diag[:, None]).clamp(min=0).masked_fill(eye, 0).sum(1)
        col_cost = (margin + s - diag[None, :]).clamp(min=0).masked_fill(eye, 0).sum(0)
        row_idx = col_idx = torch.full((n,), -1, dtype=torch.int64)
    (grad * (row_cost.sum() + col_cost.sum())).backward()
    return (row_cost.detach(), col_cost.detach(), row_idx, col_idx), (a.grad, b.grad)


def topk_ref(q, g, k):
    """Scores and indices of the k best gallery rows per query: score descending, then index ascending."""
    s = q.double() @ g.double().t()
    order = torch.sort(-s, dim=1, stable=True).indices[:, :k]
    return s.gather(1, order), order


def ranks_ref(q, g, targets):
    """Best (smallest) 0-based stable rank over the valid targets of each query (−1 when none)."""
    s = q.double() @ g.double().t()
    if targets.dim() == 1:
        targets = targets[:, None]
    idx = torch.arange(s.shape[1])
    out = []
    for i in range(s.shape[0]):
        ranks = [int((s[i] > s[i, t]).sum() + ((s[i] == s[i, t]) & (idx < t)).sum())
                 for t in targets[i].tolist() if t >= 0]
        out.append(min(ranks) if ranks else -1)
    return torch.tensor(out, dtype=torch.int64)


def integer_feats(n, d, dtype=torch.float32):
    """Small-integer features: every score is exact in fp32 (and fp16 inputs), so orders and ties are exact."""
    return (torch.randn(n, d) * 2).round().clamp(-4, 4).to(dtype)

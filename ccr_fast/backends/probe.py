"""One-time conformance probe of a GPU backend on a device, against float64 torch references (cached per process).

The dispatch (``ccr_fast.ops.dispatch``) calls :func:`probe_ok` once, before it lets ``backend="auto"`` use a GPU
backend on a device, passing the module its table names for (family, backend, device type); on failure it falls
back to the next backend with a warning that quotes the returned reason. The probe runs the backend's host functions (the kernel contract of docs/interop.md, module
``ccr_fast.backends.<backend>.<family>``) once on small bf16 inputs whose shapes are not tile multiples and whose
feature size exceeds 64, and compares every output with a float64 evaluation of the contract on the same rounded
inputs. Nothing here synchronises more than once per (backend, family, device) and process.
"""
from __future__ import annotations

import importlib
import threading
from typing import Callable, Dict, Tuple

import torch

FAMILIES = ("contrastive", "triplet", "topk", "ranks", "similarity", "sigmoid")
_cache: Dict[Tuple[str, str, str], Tuple[bool, str]] = {}
_lock = threading.Lock()

# bf16 inputs are compared on their rounded values, so only accumulation (fp32) and, for blas, the bf16 dZ / weight
# operands (2^-9 relative) separate a correct backend from the reference.
_RTOL_FWD = 1e-4
_RTOL_GRAD = 2e-2


def _host(backend: str, family: str):
    return importlib.import_module(f"ccr_fast.backends.{backend}.{family}")


def _close(name, got, want, rtol):
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError(f"{name}: non-finite values")
    err = float((got - want).abs().max()) if got.numel() else 0.0
    tol = rtol * max(1.0, float(want.abs().max()) if want.numel() else 1.0)
    if err > tol:
        raise AssertionError(f"{name}: max abs error {err:.3g} > {tol:.3g}")


def _feats(n, d, device, gen):
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).to(device=device, dtype=torch.bfloat16)


def _probe_contrastive(mod, device, gen):
    b, k, d = 37, 2, 80
    x, y = _feats(b, d, device, gen), _feats(b * k, d, device, gen)
    scale = torch.tensor(10.0, device=device)
    xd, yd = x.double().cpu(), y.double().cpu()
    z = 10.0 * xd @ yd.t()
    pos = (torch.arange(b)[:, None] // 1) == (torch.arange(b * k)[None, :] // k)
    lse_r, lse_c = z.logsumexp(1), z.logsumexp(0)
    out = mod.contrastive_forward(x, y, scale, 0, 1, 0, k, True)
    for name, got, want in zip(("lse_row", "lse_col", "pos_row", "pos_col"), out,
                               (lse_r, lse_c, (z * pos).sum(1), (z * pos).sum(0))):
        _close(name, got, want, _RTOL_FWD * 10)
    rc = torch.rand(b, generator=gen, dtype=torch.float64)
    cc = torch.rand(b * k, generator=gen, dtype=torch.float64)
    w_pos = 0.3
    dz = rc[:, None] * (z - lse_r[:, None]).exp() + cc[None, :] * (z - lse_c[None, :]).exp() - w_pos * pos
    f32 = dict(device=device, dtype=torch.float32)
    dx, dy, ds = mod.contrastive_backward(x, y, scale, out[0], out[1], rc.to(**f32), cc.to(**f32), w_pos, 0, 1, 0, k)
    _close("dx", dx, 10.0 * dz @ yd, _RTOL_GRAD)
    _close("dy", dy, 10.0 * dz.t() @ xd, _RTOL_GRAD)
    _close("dscale", ds, (dz * (xd @ yd.t())).sum(), _RTOL_GRAD)


def _probe_triplet(mod, device, gen):
    n, d, margin = 41, 80, 0.2
    a, b = _feats(n, d, device, gen), _feats(n, d, device, gen)
    ad, bd = a.double().cpu(), b.double().cpu()
    s = bd @ ad.t()
    eye = torch.eye(n, dtype=torch.bool)
    diag = s.diagonal()
    for mv in (True, False):
        rc, cc, ri, ci = mod.triplet_forward(a, b, margin, mv)
        if mv:
            neg = s.masked_fill(eye, float("-inf"))
            want_r = (margin + neg.max(1).values - diag).clamp(min=0)
            want_c = (margin + neg.max(0).values - diag).clamp(min=0)
            _close("row_cost", rc, want_r, _RTOL_FWD * 10)
            _close("col_cost", cc, want_c, _RTOL_FWD * 10)
            if not (torch.equal(ri.cpu(), neg.argmax(1)) and torch.equal(ci.cpu(), neg.argmax(0))):
                raise AssertionError("hardest-negative indices differ from the reference")
        else:
            want_r = (margin + s - diag[:, None]).clamp(min=0).masked_fill(eye, 0).sum(1)
            want_c = (margin + s - diag[None, :]).clamp(min=0).masked_fill(eye, 0).sum(0)
            _close("row_cost", rc, want_r, _RTOL_FWD * 10)
            _close("col_cost", cc, want_c, _RTOL_FWD * 10)
        ad_ = ad.clone().requires_grad_()
        bd_ = bd.clone().requires_grad_()
        s2 = bd_ @ ad_.t()
        dg = s2.diagonal()
        if mv:
            r_neg, c_neg = s2.gather(1, ri.cpu()[:, None])[:, 0], s2.gather(0, ci.cpu()[None, :])[0]
            loss = (margin + r_neg - dg).clamp(min=0).sum() + (margin + c_neg - dg).clamp(min=0).sum()
        else:
            loss = ((margin + s2 - dg[:, None]).clamp(min=0).masked_fill(eye, 0).sum()
                    + (margin + s2 - dg[None, :]).clamp(min=0).masked_fill(eye, 0).sum())
        (0.5 * loss).backward()
        da, db = mod.triplet_backward(a, b, margin, mv, ri, ci, 0.5)
        _close("da", da, ad_.grad, _RTOL_GRAD)
        _close("db", db, bd_.grad, _RTOL_GRAD)


def _probe_topk(mod, device, gen):
    q, g, k = _feats(29, 80, device, gen), _feats(300, 80, device, gen), 7
    s = q.double().cpu() @ g.double().cpu().t()
    scores, idx = mod.topk(q, g, k, 0)
    want = torch.sort(s, dim=1, descending=True, stable=True).values[:, :k]
    _close("scores", scores, want, _RTOL_FWD)
    _close("score of each returned index", s.gather(1, idx.cpu()), want, _RTOL_FWD)


def _probe_ranks(mod, device, gen):
    q, g = _feats(29, 80, device, gen), _feats(300, 80, device, gen)
    t = torch.randint(0, 300, (29, 2), generator=gen)
    t[0, 1] = -1
    s = q.double().cpu() @ g.double().cpu().t()
    got = mod.target_ranks(q, g, t.to(device)).cpu()
    st = s.gather(1, t.clamp(min=0))
    band = 1e-5
    lo = ((s[:, None, :] > st[:, :, None] + band).sum(2)).masked_fill(t < 0, 10 ** 9).min(1).values
    hi = ((s[:, None, :] >= st[:, :, None] - band).sum(2) - 1).masked_fill(t < 0, 10 ** 9).min(1).values
    if not ((got >= lo) & (got <= hi)).all():
        raise AssertionError(f"ranks outside the reference band: got {got.tolist()[:8]}, lo {lo.tolist()[:8]}")


def _probe_similarity(mod, device, gen):
    q, g = _feats(29, 80, device, gen), _feats(71, 80, device, gen)
    _close("scores", mod.similarity(q, g), q.double().cpu() @ g.double().cpu().t(), _RTOL_FWD)


def _probe_sigmoid(mod, device, gen):
    m, k, d, w = 37, 2, 80, 1.0 / 37
    x, y = _feats(m, d, device, gen), _feats(m * k, d, device, gen)
    scale, bias = torch.tensor(10.0, device=device), torch.tensor(-10.0, device=device)
    xd, yd = x.double().cpu(), y.double().cpu()
    raw = xd @ yd.t()
    z = 10.0 * raw - 10.0
    for positives, pos_off in ((True, 0), (True, 5), (False, 0)):
        own = (torch.arange(m)[:, None] + pos_off) == (torch.arange(m * k)[None, :] // k)
        label = (own.double() * 2 - 1) if positives else -torch.ones_like(z)
        loss = w * torch.nn.functional.softplus(-label * z).sum()
        g = -w * label * torch.sigmoid(-label * z)
        out = mod.sigmoid_forward(x, y, scale, bias, k, pos_off, positives, w, True)
        _close("loss", out[0], loss, _RTOL_FWD * 10)
        for name, got, want in zip(("dx", "dy", "dscale", "dbias"), out[1:],
                                   (10.0 * g @ yd, 10.0 * g.t() @ xd, (g * raw).sum(), g.sum())):
            _close(name, got, want, _RTOL_GRAD)


_PROBES: Dict[str, Callable] = {"contrastive": _probe_contrastive, "triplet": _probe_triplet, "topk": _probe_topk,
                                "ranks": _probe_ranks, "similarity": _probe_similarity, "sigmoid": _probe_sigmoid}


def probe_ok(backend: str, family: str, device: torch.device, host=None) -> Tuple[bool, str]:
    """Run (once per process) the conformance probe of ``backend``'s ``family`` host functions on ``device``.

    ``host``: the module holding those host functions (the dispatch table's entry; default
    ``ccr_fast.backends.<backend>.<family>``).

    Returns:
        (True, "") when every output matches the float64 reference, else (False, reason).
    """
    if family not in _PROBES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    device = torch.device(device)
    key = (backend, family, str(device))
    with _lock:
        if key in _cache:
            return _cache[key]
        try:
            mod = _host(backend, family) if host is None else host
            gen = torch.Generator().manual_seed(1234)
            _PROBES[family](mod, device, gen)
            result = (True, "")
        except Exception as exc:  # noqa: BLE001 - any failure disqualifies the backend, with the reason
            result = (False, f"{backend}/{family} conformance probe failed on {device}: {type(exc).__name__}: {exc}")
        _cache[key] = result
        return result


def clear() -> None:
    """Forget the cached probe results (tests)."""
    with _lock:
        _cache.clear()

"""Float64 dense references for the contrastive tests (independent of ccr_fast.ops.contrastive)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_ref(img, txt, scale):
    """open_clip ClipLoss (world size 1) in float64, via F.cross_entropy."""
    z = scale * img.double() @ txt.double().T
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(z, labels) + F.cross_entropy(z.T, labels)) / 2


def one_to_k_ref(img, txt3, scale, t2i_divisor="K"):
    """ccr_fast.losses.one_to_k_loss (docs/methods.md, "ccrk") written out literally in float64; txt3 is [B, K, d]."""
    B, K, d = txt3.shape
    z = scale * img.double() @ txt3.reshape(B * K, d).double().T  # [B, BK]
    owner = torch.arange(B * K) // K
    y = (torch.arange(B)[:, None] == owner[None, :]).double()
    l_i2t = -(torch.log_softmax(z, dim=1) * y).sum() / B
    l_t2i = -(torch.log_softmax(z, dim=0) * y).sum() / (B * K)
    if t2i_divisor == "K":
        return (l_i2t + l_t2i) / (2 * K)
    return (l_i2t / K + l_t2i) / 2


def general_ref(x, y, scale, offs, w_row, w_col):
    """Weighted multi-positive two-direction CE of Z = scale x yᵀ under the positive rule ``offs``."""
    row_off, row_div, col_off, col_div = offs
    z = scale * x.double() @ y.double().T
    pos = (((torch.arange(x.shape[0]) + row_off) // row_div)[:, None]
           == ((torch.arange(y.shape[0]) + col_off) // col_div)[None, :]).double()
    loss = -w_row * (torch.log_softmax(z, dim=1) * pos).sum()
    if w_col:
        loss = loss - w_col * (torch.log_softmax(z, dim=0) * pos).sum()
    return loss


def assert_close_fa(out, ref64, out_torch, *, floor, what=""):
    """FA-style criterion: ``|out − ref| ≤ 2·|out_torch − ref| + floor`` (max over elements).

    ``out_torch`` is a plain-torch computation in the same low precision as ``out``.
    """
    err = (out.double() - ref64.double()).abs().max().item()
    base = (out_torch.double() - ref64.double()).abs().max().item()
    assert err <= 2 * base + floor, f"{what}: error {err:.3e} > 2*{base:.3e} + {floor:.1e}"

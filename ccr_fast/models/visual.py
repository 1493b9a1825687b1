"""Visual encoders over features: an MLP over pooled features, a 1-layer transformer over frames (or patch tokens),
a linear projection. All map to ``[N, out_dim]`` before the common-space mapping.

The features are precomputed ones, or the outputs of a frozen Hugging Face vision tower over raw images (top-level
``visual_encoder``; :mod:`ccr_fast.models.towers`, computed once per image by :mod:`ccr_fast.data.media_data`):
pooled ``[N, D]``, patch tokens ``[N, T, D]`` or video frames ``[N, F, D]``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .text import HeadAttention, LinearLayer, masked_mean


class MLPVisual(nn.Module):
    """NRCCR ResNet branch: ReLU(Linear(in, out)) over pooled features ``[N, in]``."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() == 3:
            x = masked_mean(x, mask)
        return F.relu(self.linear(self.drop(x)))


class LinearVisual(nn.Module):
    """Linear(in, out), no activation (the NRCCR CLIP branch)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() == 3:
            x = masked_mean(x, mask)
        return self.linear(x)


class NormLinearVisual(nn.Module):
    """Feature standardisation (BatchNorm without affine: batch statistics in training, running ones in eval) →
    Dropout → Linear(in, out), no activation. Pooled features ``[N, in]`` (token grids are mean-pooled first)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() == 3:
            x = masked_mean(x, mask)
        if self.training and x.shape[0] < 2:
            raise ValueError(f"visual: the 'norm_linear' encoder needs a batch of at least 2 in training, got "
                             f"{tuple(x.shape)}")
        return self.linear(self.drop(self.norm(x)))


class FrameTransformer(nn.Module):
    """NRCCR video branch: LinearLayer → learned positions → one attention block → mean pooling.

    Input frames ``[N, F, in]`` with ``mask [N, F]`` (or pooled ``[N, in]``, treated as one frame).
    ``masked_pool=False`` averages over the padded length as the official code does.
    """

    def __init__(self, in_dim: int, hidden: int = 1024, heads: int = 8, qk_dim: int = 512, max_frames: int = 80,
                 dropout: float = 0.1, masked_pool: bool = False):
        super().__init__()
        self.proj = LinearLayer(in_dim, hidden, dropout)
        self.pos = nn.Embedding(max_frames, hidden)
        self.pos_norm = nn.LayerNorm(hidden)
        self.pos_drop = nn.Dropout(dropout)
        self.attn = HeadAttention(hidden, heads, qk_dim, dropout)
        self.masked_pool = masked_pool

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if mask is None:
            mask = x.new_ones(x.shape[:2])
        h = self.proj(x)
        h = self.pos_drop(self.pos_norm(h + self.pos(torch.arange(h.shape[1], device=h.device))))
        return masked_mean(self.attn(h, mask), mask if self.masked_pool else None)


def build_visual(kind: str, in_dim: int, out_dim: int, **kw) -> nn.Module:
    """``kind`` in {"mlp", "linear", "norm_linear", "transformer"}; ``dropout`` is used by "norm_linear"."""
    if kind == "mlp":
        return MLPVisual(in_dim, out_dim)
    if kind == "linear":
        return LinearVisual(in_dim, out_dim)
    if kind == "norm_linear":
        return NormLinearVisual(in_dim, out_dim, dropout=float(kw.get("dropout", 0.0)))
    if kind == "transformer":
        kw.pop("dropout", None)
        return FrameTransformer(in_dim, out_dim, **kw)
    raise ValueError(f"model.visual_encoder must be 'mlp', 'linear', 'norm_linear' or 'transformer', got {kind!r}")

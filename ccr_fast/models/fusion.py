"""A small fusion encoder for CCR^k ITM/MLM: text layers (self-attention, cross-attention to visual tokens, FFN)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class FusionLayer(nn.Module):
    """Post-LN transformer layer: self-attention over text, cross-attention to visual tokens, feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.n1, self.n2, self.n3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, pad, v, vpad):
        x = self.n1(x + self.drop(self.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]))
        x = self.n2(x + self.drop(self.cross_attn(x, v, v, key_padding_mask=vpad, need_weights=False)[0]))
        return self.n3(x + self.drop(self.ffn(x)))


class FusionEncoder(nn.Module):
    """Text states ``[N, L, text_dim]`` attend to visual tokens ``[N, Lv, vis_dim]`` (or pooled ``[N, vis_dim]``).

    Args:
        text_dim, vis_dim: input widths (projected to ``width``). layers, heads: size of the stack.
    Returns (forward): fused token states ``[N, L, width]``; position 0 is the fusion [CLS].
    """

    def __init__(self, text_dim: int, vis_dim: int, width: int = 256, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.text_in = nn.Linear(text_dim, width)
        self.vis_in = nn.Linear(vis_dim, width)
        self.layers = nn.ModuleList(FusionLayer(width, heads, dropout) for _ in range(layers))
        self.width = width

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, visual: torch.Tensor,
                visual_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if visual.dim() == 2:
            visual = visual.unsqueeze(1)
        if visual_mask is None:
            visual_mask = visual.new_ones(visual.shape[:2])
        x, v = self.text_in(text), self.vis_in(visual)
        pad, vpad = text_mask == 0, visual_mask == 0
        for layer in self.layers:
            x = layer(x, pad, v, vpad)
        return x

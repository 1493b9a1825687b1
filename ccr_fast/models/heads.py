"""Small heads: NRCCR language discriminators, the CCR^k ITM head and an MLM head."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .text import masked_mean


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv1d(ch, ch, 5, padding=2)
        self.c2 = nn.Conv1d(ch, ch, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * self.c2(F.relu(self.c1(F.relu(x))))


class LanguageDiscriminator(nn.Module):
    """NRCCR language discriminator on encoder token states ``[N, L, W]`` → 2 logits ``[N, 2]``.

    ``kind``: "weak" (Linear on the token mean), "not-so-weak" (MLP W→256→128→2 with tanh on the token mean),
    "strong" (Conv1d W→128, three residual conv blocks ×0.3, token mean, Linear 128→2). The token mean includes
    padding unless ``masked`` (official: unmasked).
    """

    def __init__(self, width: int, kind: str = "not-so-weak", masked: bool = False):
        super().__init__()
        self.kind, self.masked = kind, masked
        if kind == "weak":
            self.net = nn.Linear(width, 2)
        elif kind == "not-so-weak":
            self.net = nn.Sequential(nn.Linear(width, 256), nn.Tanh(), nn.Linear(256, 128), nn.Tanh(), nn.Linear(128, 2))
        elif kind == "strong":
            self.conv = nn.Conv1d(width, 128, 1)
            self.blocks = nn.Sequential(_ResBlock(128), _ResBlock(128), _ResBlock(128))
            self.net = nn.Linear(128, 2)
        else:
            raise ValueError(f"disc_type must be 'weak', 'not-so-weak' or 'strong', got {kind!r}")

    def forward(self, states: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        m = mask if self.masked else None
        if self.kind == "strong":
            h = self.blocks(self.conv(states.transpose(1, 2))).transpose(1, 2)
            return self.net(masked_mean(h, m))
        return self.net(masked_mean(states, m))


class ITMHead(nn.Module):
    """Image-text matching head on the fusion [CLS]: Linear(W, 2W) → LayerNorm → GELU → Linear(2W, 2)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(), nn.Linear(2 * width, 2))

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.net(cls)


class MLMHead(nn.Module):
    """Masked-LM head: Dense → GELU → LayerNorm → Linear(vocab) over token states ``[N, L, W]``."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))

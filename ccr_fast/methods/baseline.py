"""Baseline dual encoder: the NRCCR architecture trained only on (V, S) and (V, T*) with one retrieval loss.

``cfg.baseline.loss``: "triplet" (VSE++, margin, max-violation, summed) or "infonce" (symmetric CLIP loss with a
fixed temperature). ``L = w_src·L(v, s) + w_tgt·L(v, t)``; items without ``tgt`` train on (V, S) only.
"""
from __future__ import annotations

from .. import losses as L
from .base import dist_info
from .nrccr import DualEncoderMethod


class Baseline(DualEncoderMethod):
    name = "baseline"

    def __init__(self, cfg):
        super().__init__(cfg, masked_pool=cfg.baseline.masked_pool)
        c = cfg.baseline
        if c.loss not in ("triplet", "infonce"):
            raise ValueError(f"baseline.loss must be 'triplet' or 'infonce', got {c.loss!r}")
        rank, world = dist_info()
        self.clip = L.ClipLoss(gather_with_grad=True, rank=rank, world_size=world) if c.loss == "infonce" else None

    def pair_loss(self, v, t):
        c = self.mcfg
        if c.loss == "triplet":
            return L.triplet_loss(v, t, margin=c.margin, max_violation=c.max_violation, reduction="sum")
        return self.clip(v, t, 1.0 / c.temperature)

    def loss_dict(self, batch):
        v = self.embed_visual(batch["visual"], batch.get("visual_mask"))
        out = {}
        key_src = "src" if "src" in batch else "text"
        out["src"] = self.pair_loss(v, self.embed_text(batch[key_src]))
        if "tgt" in batch:
            out["tgt"] = self.pair_loss(v, self.embed_text(batch["tgt"]))
        return self.weighted_total(out, {"src": self.mcfg.w_src, "tgt": self.mcfg.w_tgt})

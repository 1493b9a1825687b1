"""The interface every method implements, and the pieces they share.

A method is an ``nn.Module`` built from a :class:`ccr_fast.config.Config`:

* ``Method.build(cfg)`` — construct the model (text encoder from a local path, heads, visual encoder);
* ``collate`` — the DataLoader ``collate_fn`` (tokenisation happens there);
* ``loss_dict(batch)`` — named losses plus ``"total"`` (weights from the method's config section);
* ``extra_step()`` — called by the training loop after each optimiser step (NRCCR: the discriminator's Adam step);
* ``main_parameters()`` — what the main optimiser updates;
* ``encode_text(texts, lang)`` / ``encode_visual(features)`` — L2-normalised embeddings for evaluation;
  ``itm_scores`` (CCR^k only) — re-scores top-k candidates. Evaluation (:mod:`ccr_fast.evaluate`) reads the NRCCR
  translate-test weight from ``cfg.nrccr.fusion_weight``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..config import Config
from ..data.collate import Collator, stack_visual, tokenize
from ..models.text import TextBackbone, freeze_encoder, load_text_encoder, load_tokenizer, tiny_text_encoder


def dist_info():
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def build_text_backbone(cfg: Config, tokenizer) -> TextBackbone:
    """Load (or, for tests, build tiny) the text encoder, freeze per ``model.trainable_layers``, wrap with the cache."""
    m = cfg.model
    if m.tiny_text_encoder:
        enc = tiny_text_encoder(len(tokenizer), hidden=m.tiny_text_encoder, layers=m.tiny_text_layers,
                                pad_token_id=tokenizer.pad_token_id or 0, dropout=m.dropout)
    else:
        enc = load_text_encoder(cfg.text_encoder)
    freeze_encoder(enc, m.trainable_layers)
    return TextBackbone(enc, cache=m.cache_text_states)


class Method(nn.Module):
    """Base class: tokenizer, collate, encoders for evaluation."""

    name = "method"

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.mcfg = cfg.method_cfg()
        self.tokenizer = load_tokenizer(cfg.text_encoder)
        self.collate = Collator(self.tokenizer, cfg.model.max_tokens, cfg.model.text_prefix)

    @classmethod
    def build(cls, cfg: Config) -> "Method":
        return cls(cfg)

    # --- training -------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> Dict[str, torch.Tensor]:
        """Same as :meth:`loss_dict` (so DistributedDataParallel sees a forward call)."""
        return self.loss_dict(batch)

    def loss_dict(self, batch: dict) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_step(self) -> None:
        """Hook run after each main optimiser step (default: nothing)."""

    def main_parameters(self) -> List[nn.Parameter]:
        """Trainable parameters for the main optimiser (default: all that require grad)."""
        return [p for p in self.parameters() if p.requires_grad]

    def extra_state(self) -> dict:
        """Extra optimiser states to checkpoint (NRCCR discriminator)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    @staticmethod
    def weighted_total(losses: Dict[str, torch.Tensor], weights: Dict[str, float]) -> Dict[str, torch.Tensor]:
        """Add ``total = Σ w·loss`` over the listed weights (terms with weight 0 are skipped, i.e. ablated)."""
        total = None
        for k, w in weights.items():
            if w and k in losses:
                total = w * losses[k] if total is None else total + w * losses[k]
        losses["total"] = total
        return losses

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- evaluation -----------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        t = tokenize(self.tokenizer, list(texts), self.cfg.model.max_tokens, self.cfg.model.text_prefix)
        return {k: v.to(self.device) for k, v in t.items()}

    def embed_text(self, tok: Dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_visual(self, visual: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], lang: Optional[str] = None, batch_size: int = 128) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, d]`` (float32, on the model's device), in eval mode."""
        was = self.training
        self.eval()
        out = [self.embed_text(self.tokenize(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        self.train(was)
        return torch.cat(out).float()

    @torch.no_grad()
    def encode_visual(self, features, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised visual embeddings ``[G, d]`` from features ``[G, Dv]`` (or ``[G, F, Dv]``)."""
        was = self.training
        self.eval()
        out = []
        for i in range(0, len(features), batch_size):
            v, m = stack_visual(list(np.asarray(features[i:i + batch_size], dtype=np.float32)))
            out.append(self.embed_visual(v.to(self.device), None if m is None else m.to(self.device)))
        self.train(was)
        return torch.cat(out).float()

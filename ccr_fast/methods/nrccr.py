"""NRCCR (docs/methods.md, "nrccr"): noise-robust CCR with a cross-attention teacher, cycle and adversarial losses.

Per batch of N (visual, S, T*, B̃)::

    tok_S, tok_T, tok_B = E(S), E(T*), E(B̃)                 # encoder token states
    c_S, c_T, c_B = Map_t(head(tok_*))                     # shared NRCCR text head, self mode
    h_C = Map_t(head.teacher(x_S, x_T))                    # same attention block, cross mode
    v = Map_v(VisEnc(visual))
    L = L_tri(c_S,v) + 0.6 L_tri(c_T,v) + 0.4 DTL(h_C.detach(), c_T, v) + 0.1 SmoothL1_β4(c_T, h_C)
        + 0.5 L_tri(c_S,c_B) + 0.001 BCE(D(tok_T), 1)

Flags (``cfg.nrccr``): every weight (0 ablates a loss), ``masked_pool`` (False = official unmasked mean),
``disc_type``, ``fusion_weight`` (translate-test weight of the MT-to-English query at test) and
``fusion_weight_val`` (the weight validation uses; default the same).

Differences from the official code (documented choices): the discriminator's Adam step runs in
:meth:`extra_step` after the main step, on the token states of that batch (the official code steps it just
before computing the generator term of the same batch).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import losses as L
from ..config import ConfigError
from ..data import NRCCRDataset, concat_datasets
from ..models.heads import LanguageDiscriminator
from ..models.text import LatentMapping, NRCCRTextHead
from ..models.visual import build_visual
from .base import Method, build_text_backbone


class DualEncoderMethod(Method):
    """Text encoder + NRCCR text head + mapping, visual encoder + mapping (shared by NRCCR and the baseline)."""

    def __init__(self, cfg, masked_pool: bool):
        super().__init__(cfg)
        m = cfg.model
        self.text = build_text_backbone(cfg, self.tokenizer)
        self.head = NRCCRTextHead(self.text.hidden_size, m.text_hidden, m.heads, m.qk_dim, dropout=m.dropout,
                                  masked_pool=masked_pool)
        self.map_t = LatentMapping(m.text_hidden, m.embed_dim, m.map_dropout)
        self.visual = build_visual(m.visual_encoder, m.visual_dim, m.visual_hidden)
        self.map_v = LatentMapping(m.visual_hidden, m.embed_dim, m.map_dropout)

    def states(self, tok):
        return self.text(tok["input_ids"], tok["attention_mask"])

    def embed_text(self, tok):
        pooled, _ = self.head.encode(self.states(tok), tok["attention_mask"])
        return self.map_t(pooled)

    def embed_visual(self, visual, mask=None):
        return self.map_v(self.visual(visual, mask))

    def train_dataset(self, data):
        """(visual, S, T*) pairs: the source captions and their MT into each target language."""
        from ..data import CL2CMDataset

        src, tgts = self.source_and_targets()
        return concat_datasets([CL2CMDataset(data, src, t, stand_in=self.cfg.files.mt_stand_in) for t in tgts])


class NRCCR(DualEncoderMethod):
    name = "nrccr"

    def __init__(self, cfg):
        super().__init__(cfg, masked_pool=cfg.nrccr.masked_pool)
        c = cfg.nrccr
        self.disc = LanguageDiscriminator(self.text.hidden_size, c.disc_type)
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=c.disc_lr, betas=(0.9, 0.999), eps=1e-8)
        self.translate_test_weight = c.fusion_weight
        self.val_translate_test_weight = c.fusion_weight if c.fusion_weight_val is None else c.fusion_weight_val
        for name, w in (("fusion_weight", c.fusion_weight), ("fusion_weight_val", self.val_translate_test_weight)):
            if not 0.0 <= float(w) <= 1.0:
                raise ConfigError(f"nrccr.{name}: expected a weight in [0, 1], got {w}")
        self._disc_inputs = None
        self.warn_inert()

    def inert_terms(self):
        if self.mcfg.w_adv and self.text.frozen():
            return {"adv": "the adversarial loss acts on the text encoder's token states, and every encoder layer "
                           "is frozen (set model.train_top_layers or model.trainable_layers)"}
        return {}

    def train_dataset(self, data):
        """(visual, S, T*, B̃) tuples per target language: source captions, MT, back-translation (NRCCRDataset)."""
        src, tgts = self.source_and_targets()
        return concat_datasets([NRCCRDataset(data, src, t, stand_in=self.cfg.files.mt_stand_in) for t in tgts])

    def main_parameters(self):
        disc = {id(p) for p in self.disc.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in disc]

    def tri(self, a, b):
        c = self.mcfg
        return L.triplet_loss(a, b, margin=c.margin, max_violation=c.max_violation, reduction="sum")

    def loss_dict(self, batch) -> Dict[str, torch.Tensor]:
        c = self.mcfg
        src, tgt = batch["src"], batch["tgt"]
        s_S, s_T = self.states(src), self.states(tgt)
        pooled_S, x_S = self.head.encode(s_S, src["attention_mask"])
        pooled_T, x_T = self.head.encode(s_T, tgt["attention_mask"])
        c_S, c_T = self.map_t(pooled_S), self.map_t(pooled_T)
        v = self.embed_visual(batch["visual"], batch.get("visual_mask"))
        out = {"tri_src": self.tri(c_S, v), "tri_tgt": self.tri(c_T, v)}
        if c.w_dtl or c.w_feat:
            h_C = self.map_t(self.head.teacher(x_S, src["attention_mask"], x_T, tgt["attention_mask"]))
            # teacher detached only here; v is not detached (DTL also trains the visual side through the teacher)
            out["dtl"] = L.similarity_distillation_loss(h_C.detach(), c_T, v, temperature=c.dtl_temperature)
            out["feat"] = F.smooth_l1_loss(c_T, h_C, beta=c.smooth_l1_beta)
        if c.w_cyc and "back" in batch:
            s_B = self.states(batch["back"])
            c_B = self.map_t(self.head.encode(s_B, batch["back"]["attention_mask"])[0])
            out["cyc"] = self.tri(c_S, c_B)
        if c.w_adv:
            logits = self.disc(s_T, tgt["attention_mask"])
            out["adv"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            self._disc_inputs = (s_S.detach(), src["attention_mask"], s_T.detach(), tgt["attention_mask"])
        return self.weighted_total(out, {"tri_src": c.w_tri_src, "tri_tgt": c.w_tri_tgt, "dtl": c.w_dtl,
                                         "feat": c.w_feat, "cyc": c.w_cyc, "adv": c.w_adv})

    def discriminator_loss(self, s_S, m_S, s_T, m_T) -> torch.Tensor:
        """L_D = ½[BCE(D(src), 1) + BCE(D(tgt), 0)] on detached states."""
        ls, lt = self.disc(s_S, m_S), self.disc(s_T, m_T)
        return 0.5 * (F.binary_cross_entropy_with_logits(ls, torch.ones_like(ls))
                      + F.binary_cross_entropy_with_logits(lt, torch.zeros_like(lt)))

    def extra_step(self) -> None:
        """The discriminator's own Adam step on the last batch's (detached) token states."""
        if self._disc_inputs is None:
            return
        self.disc_opt.zero_grad(set_to_none=True)
        loss = self.discriminator_loss(*self._disc_inputs)
        grads = torch.autograd.grad(loss, list(self.disc.parameters()))
        for p, g in zip(self.disc.parameters(), grads):
            p.grad = g
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for p in self.disc.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= torch.distributed.get_world_size()
        self.disc_opt.step()
        self.disc_opt.zero_grad(set_to_none=True)
        self._disc_inputs = None

    def extra_state(self):
        return {"disc_opt": self.disc_opt.state_dict()}

    def load_extra_state(self, state):
        if "disc_opt" in state:
            self.disc_opt.load_state_dict(state["disc_opt"])

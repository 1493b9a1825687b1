"""CL2CM reconstruction (docs/methods.md, "cl2cm" — no public code; every uncertain choice is a ``cfg.cl2cm`` flag).

Two networks trained jointly on (V, S, T*); only the CM network is used at inference (dual-stream retrieval).

* **CM network** (vision ↔ target text): visual encoder + text encoder → common space.
  ``L_cm = InfoNCE(v, t*) [+ InfoNCE(v, s) when cm_src]`` (symmetric, temperature ``temperature``).
* **CL network** (source ↔ target text): the text encoder (shared with CM when ``share_text_encoder``, else a
  separate copy) with its own sentence and token projections.

  - sentence level: ``L_sent = InfoNCE(s_cl, t_cl)``;
  - word level (``w_word``): cost ``C_ij = 1 − cos(w^S_i, w^T_j)`` over valid tokens, entropic OT plan Π with
    uniform marginals by Sinkhorn (``ot_eps``, ``ot_iters``) under stop-gradient; ``ot_mode="distance"``
    minimises ⟨Π, C⟩, ``ot_mode="target"`` uses Π (row-normalised) as soft targets of the row-softmax of the
    token similarities.
* **Relational distillation** (``w_kt``): teacher ``R_CL = sim(s_i, t*_j)/τ_t`` (detached), student
  ``R_CM = sim(v_i, t*_j)/τ_s``; ``L_kt = KL_row + KL_col`` (``kt_rows``/``kt_cols`` select each).

``L = L_cm + w_sent·L_sent + w_word·L_word + w_kt·L_kt``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import losses as L
from ..data import CL2CMDataset, concat_datasets
from ..models.text import LatentMapping, masked_mean
from ..models.visual import build_visual
from .base import Method, build_text_backbone, dist_info


@torch.no_grad()
def sinkhorn(cost: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor, eps: float = 0.05,
             iters: int = 50) -> torch.Tensor:
    """Entropic OT plans with uniform marginals over valid tokens (log domain).

    Args:
        cost: ``[N, La, Lb]``. mask_a ``[N, La]``, mask_b ``[N, Lb]``: 1 on valid tokens.
    Returns:
        Π ``[N, La, Lb]``, zero on padding, each plan summing to 1.
    """
    ma, mb = mask_a.to(cost.dtype), mask_b.to(cost.dtype)
    log_a = torch.log(ma / ma.sum(1, keepdim=True)).nan_to_num(neginf=-1e9)  # padding -> ~zero mass
    log_b = torch.log(mb / mb.sum(1, keepdim=True)).nan_to_num(neginf=-1e9)
    logk = -cost / eps
    logk = logk.masked_fill((ma.unsqueeze(2) * mb.unsqueeze(1)) == 0, -1e9)
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(iters):
        f = log_a - torch.logsumexp(logk + g.unsqueeze(1), dim=2)
        g = log_b - torch.logsumexp(logk + f.unsqueeze(2), dim=1)
    plan = torch.exp(f.unsqueeze(2) + logk + g.unsqueeze(1))
    return plan * ma.unsqueeze(2) * mb.unsqueeze(1)


def relation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, rows: bool = True,
                cols: bool = True) -> torch.Tensor:
    """KL(softmax(teacher) ‖ softmax(student)) row-wise and/or column-wise, batch-mean; the teacher is detached."""
    t = teacher_logits.detach()
    out = student_logits.new_zeros(())
    if rows:
        out = out + F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(t, 1), log_target=True,
                             reduction="batchmean")
    if cols:
        out = out + F.kl_div(F.log_softmax(student_logits.t(), 1), F.log_softmax(t.t(), 1), log_target=True,
                             reduction="batchmean")
    return out


class CL2CM(Method):
    name = "cl2cm"

    def __init__(self, cfg):
        super().__init__(cfg)
        m, c = cfg.model, cfg.cl2cm
        if c.ot_mode not in ("distance", "target"):
            raise ValueError(f"cl2cm.ot_mode must be 'distance' or 'target', got {c.ot_mode!r}")
        self.text = build_text_backbone(cfg, self.tokenizer)
        h = self.text.hidden_size
        self.cm_text = LatentMapping(h, m.embed_dim, m.map_dropout, batch_norm=False)
        self.visual = build_visual(m.visual_encoder, m.visual_dim, m.visual_hidden)
        self.map_v = LatentMapping(m.visual_hidden, m.embed_dim, m.map_dropout, batch_norm=False)
        self.cl_text = self.text if c.share_text_encoder else copy.deepcopy(self.text)
        self.cl_sent = nn.Linear(h, m.embed_dim)
        self.cl_word = nn.Linear(h, m.embed_dim)
        rank, world = dist_info()
        self.clip = L.ClipLoss(gather_with_grad=True, rank=rank, world_size=world)
        self.warn_inert()

    def inert_terms(self):
        if self.mcfg.w_word and self.cl_text.frozen():
            return {"word": "the word-level OT alignment trains only cl_word (used by no other term) and the text "
                            "encoder's token states, and every encoder layer is frozen (set model.train_top_layers "
                            "or model.trainable_layers)"}
        return {}

    def train_dataset(self, data):
        """(visual, S, T*) triples: the source captions and their MT into each target language."""
        src, tgts = self.source_and_targets()
        return concat_datasets([CL2CMDataset(data, src, t, stand_in=self.cfg.files.mt_stand_in) for t in tgts])

    def pool(self, states, mask):
        return masked_mean(states, mask if self.mcfg.masked_pool else None)

    def embed_text(self, tok):
        return self.cm_text(self.pool(self.text(tok["input_ids"], tok["attention_mask"]), tok["attention_mask"]))

    def embed_visual(self, visual, mask=None):
        return self.map_v(self.visual(visual, mask))

    def word_loss(self, w_s, m_s, w_t, m_t) -> torch.Tensor:
        c = self.mcfg
        sim = torch.einsum("nid,njd->nij", F.normalize(w_s, dim=-1), F.normalize(w_t, dim=-1))
        plan = sinkhorn(1.0 - sim, m_s, m_t, c.ot_eps, c.ot_iters)  # stop-gradient plan
        if c.ot_mode == "distance":
            return ((1.0 - sim) * plan).sum((1, 2)).mean()
        valid = m_s.to(sim.dtype)
        target = plan / plan.sum(2, keepdim=True).clamp_min(1e-12)
        logp = F.log_softmax((sim / c.temperature).masked_fill(m_t.unsqueeze(1) == 0, -1e4), dim=2)
        return -((target * logp).sum(2) * valid).sum() / valid.sum()

    def loss_dict(self, batch):
        c = self.mcfg
        src, tgt = batch["src"], batch["tgt"]
        scale = 1.0 / c.temperature
        v = self.embed_visual(batch["visual"], batch.get("visual_mask"))
        h_T = self.text(tgt["input_ids"], tgt["attention_mask"])
        t_cm = self.cm_text(self.pool(h_T, tgt["attention_mask"]))
        out = {"cm_tgt": self.clip(v, t_cm, scale)}
        weights = {"cm_tgt": 1.0, "cm_src": 1.0 if c.cm_src else 0.0, "sent": c.w_sent, "word": c.w_word,
                   "kt": c.w_kt}
        need_src = c.cm_src or c.w_sent or c.w_word or c.w_kt
        if need_src:
            h_S = self.text(src["input_ids"], src["attention_mask"])
            if c.cm_src:
                out["cm_src"] = self.clip(v, self.cm_text(self.pool(h_S, src["attention_mask"])), scale)
            if c.w_sent or c.w_word or c.w_kt:
                if self.cl_text is not self.text:
                    h_S = self.cl_text(src["input_ids"], src["attention_mask"])
                    h_Tc = self.cl_text(tgt["input_ids"], tgt["attention_mask"])
                else:
                    h_Tc = h_T
                s_cl = F.normalize(self.cl_sent(masked_mean(h_S, src["attention_mask"])), dim=-1)
                t_cl = F.normalize(self.cl_sent(masked_mean(h_Tc, tgt["attention_mask"])), dim=-1)
                out["sent"] = self.clip(s_cl, t_cl, scale)
                if c.w_word:
                    out["word"] = self.word_loss(self.cl_word(h_S), src["attention_mask"], self.cl_word(h_Tc),
                                                 tgt["attention_mask"])
                if c.w_kt:
                    teacher = s_cl @ t_cl.t() / c.kt_teacher_temperature
                    student = v @ t_cm.t() / c.kt_student_temperature
                    out["kt"] = relation_kl(teacher, student, c.kt_rows, c.kt_cols)
        return self.weighted_total(out, weights)

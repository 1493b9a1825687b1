"""Closed-form baseline: a ridge map from visual features into the frozen text encoder's pooled space.

Text side: the frozen encoder's masked-mean last states (``model.text_prefix`` prepended), L2-normalised, minus
the mean of the training captions' embeddings when ``linear.center_text`` (then re-normalised). Visual side:
``v = normalize((x − μ) W + b)`` with

    W_λ = (Xᵀ X + λ·s·I)⁻¹ Xᵀ Y,   b = mean of Y,

over every (image, caption) pair of the training items (X: centred features of each pair's image, Y: that
caption's text target; ``s`` = mean eigenvalue of XᵀX, so ``linear.lambdas`` are scale-free). One
eigendecomposition of XᵀX gives every λ; the λ with the best validation score (``eval.metric`` averaged over
the validation languages) is kept. No optimiser step is taken: :meth:`fit` is the whole training, called by the
training loop for methods with ``closed_form = True``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.text import masked_mean
from .base import Method, build_text_backbone

TEXT_FIELDS = ("text", "src", "tgt", "back")


def item_pairs(items: Sequence[dict]) -> tuple:
    """Distinct (visual row, caption) pairs of a dataset or list of items (fields ``text``/``src``/``tgt``/``back``
    or ``texts``).

    Returns:
        ``(features [P, Dv] float32, texts list[P])`` — one row per distinct (item ``index``, caption) pair.
    """
    seen, feats, texts = set(), [], []
    for n in range(len(items)):
        it = items[n]
        caps = [it[k] for k in TEXT_FIELDS if k in it] + list(it.get("texts", []))
        for c in caps:
            key = (int(it["index"]), c)
            if key not in seen:
                seen.add(key)
                feats.append(np.asarray(it["visual"], dtype=np.float32).reshape(-1))
                texts.append(c)
    if not texts:
        raise ValueError("train items: expected text fields (text/src/tgt/back/texts), found none")
    return np.stack(feats), texts


class Linear(Method):
    """Ridge map from pooled visual features into the frozen text space (see the module docstring)."""

    name = "linear"
    closed_form = True
    resizable_buffers = ("qb_text", "qb_visual")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.text = build_text_backbone(cfg, self.tokenizer)
        if not self.text.frozen():
            raise ValueError("method='linear' needs a frozen text encoder: set model.trainable_layers=[] "
                             f"(got {cfg.model.trainable_layers!r})")
        dv, dt = int(cfg.model.visual_dim), self.text.hidden_size
        self.register_buffer("vis_mean", torch.zeros(dv))
        self.register_buffer("text_mean", torch.zeros(dt))
        self.register_buffer("bias", torch.zeros(dt))
        self.register_buffer("lam", torch.zeros(()))
        self.weight = torch.nn.Parameter(torch.zeros(dv, dt), requires_grad=False)
        # query bank (linear.querybank): the training captions' targets and the training images' embeddings
        self.register_buffer("qb_text", torch.zeros(0, dt))
        self.register_buffer("qb_visual", torch.zeros(0, dt))
        self.register_buffer("qb_beta", torch.zeros(()))
        if self.mcfg.querybank and (not self.mcfg.querybank_betas or min(self.mcfg.querybank_betas) <= 0):
            raise ValueError(f"linear.querybank_betas: expected positive values, got {self.mcfg.querybank_betas!r}")

    def ranking_encoders(self):
        """The query-bank-normalised encoders with ``linear.querybank`` (the bank and β saved by ``fit``)."""
        if not self.mcfg.querybank:
            return super().ranking_encoders()
        from ..eval.querybank import querybank_encoders

        return querybank_encoders(self.encode_text, self.encode_visual, self.qb_text, self.qb_visual,
                                  float(self.qb_beta))

    def score(self, eval_sets, batch_size: int = 128, **kw) -> dict:
        if not self.mcfg.querybank:
            return super().score(eval_sets, batch_size)
        from ..eval import evaluate_encoders

        enc_text, enc_visual = self.ranking_encoders()
        return evaluate_encoders(enc_text, enc_visual, eval_sets, batch_size=batch_size)

    def train_dataset(self, data):
        """One (visual, caption) pair per caption of every configured language (all captions of each item)."""
        from ..data import PairDataset

        return PairDataset(data, list(self.cfg.languages))

    def eval_languages(self) -> List[str]:
        return list(self.cfg.languages)

    def main_parameters(self) -> List[torch.nn.Parameter]:
        return [self.weight]  # never stepped: the loop skips its steps for closed-form methods

    def loss_dict(self, batch) -> Dict[str, torch.Tensor]:
        raise RuntimeError("method='linear' is solved in closed form by fit(); it has no loss to step")

    # --- embeddings ---------------------------------------------------------------------------------------------
    def pooled(self, tok) -> torch.Tensor:
        """Normalised frozen text embedding ``[N, H]`` (before centring)."""
        states = self.text(tok["input_ids"], tok["attention_mask"])
        return F.normalize(masked_mean(states, tok["attention_mask"]), dim=-1)

    def target(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.mcfg.center_text:
            return pooled
        return F.normalize(pooled - self.text_mean, dim=-1)

    def embed_text(self, tok):
        return self.target(self.pooled(tok))

    def embed_visual(self, visual, mask=None):
        if visual.dim() == 3:
            visual = masked_mean(visual, mask)
        return F.normalize((visual - self.vis_mean) @ self.weight + self.bias, dim=-1)

    # --- fit ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, train_items: Sequence[dict], val_sets: Optional[Sequence] = None, metric: str = "sumr") -> dict:
        """Solve the ridge map for every ``linear.lambdas`` and keep the best on ``val_sets``.

        Returns:
            the validation record ``{"lambda", "val_<metric>", "val_by_lambda": {λ: score}, "pairs"}``.
        """
        from ..eval import evaluate_method

        lambdas = [float(x) for x in self.mcfg.lambdas]
        if not lambdas or min(lambdas) <= 0:
            raise ValueError(f"linear.lambdas: expected positive values, got {self.mcfg.lambdas!r}")
        x, texts = item_pairs(train_items)
        pooled = self.encode_pooled(texts)
        self.text_mean.copy_(pooled.mean(0))
        y = self.target(pooled).double()
        x = torch.from_numpy(x).to(self.device).double()
        mu = x.mean(0)
        xc = x - mu
        evals, evecs = torch.linalg.eigh(xc.t() @ xc)
        proj = evecs.t() @ (xc.t() @ y)  # Qᵀ Xᵀ Y
        scale = float(evals.clamp_min(0).mean())
        self.vis_mean.copy_(mu.float())
        self.bias.copy_(y.mean(0).float())
        qb = bool(self.mcfg.querybank)
        betas = [float(b) for b in self.mcfg.querybank_betas] if qb else [0.0]
        if qb:
            self.qb_text = y.float()
            images = torch.from_numpy(np.unique(x.cpu().numpy(), axis=0)).to(self.device)
        scores, best = {}, None
        for lam in lambdas:
            w = evecs @ (proj / (evals.clamp_min(0) + lam * scale).unsqueeze(1))
            self.weight.copy_(w.float())
            if qb:
                self.qb_visual = self.embed_visual(images.float())
            for beta in betas:
                key = (lam, beta)
                self.qb_beta.fill_(beta)
                if not val_sets or len(lambdas) * len(betas) == 1:
                    scores[key] = float("nan")
                    best = (key, w, self.qb_visual.clone()) if best is None else best
                    continue
                scores[key] = float(evaluate_method(self, val_sets)[metric])
                if best is None or scores[key] > scores[best[0]]:
                    best = (key, w, self.qb_visual.clone())
        (lam, beta), w, bank_visual = best
        self.weight.copy_(w.float())
        self.lam.fill_(lam)
        self.qb_beta.fill_(beta)
        self.qb_visual = bank_visual
        name = (lambda k: f"{k[0]:g}, beta {k[1]:g}") if qb else (lambda k: f"{k[0]:g}")
        rec = {"epoch": 1, "lambda": lam, f"val_{metric}": scores[best[0]],
               "val_by_lambda": {name(k): v for k, v in scores.items()}, "pairs": len(texts)}
        if qb:
            rec["querybank_beta"] = beta
        return rec

    @torch.no_grad()
    def encode_pooled(self, texts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        was = self.training
        self.eval()
        out = [self.pooled(self.tokenize(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        self.train(was)
        return torch.cat(out).float()

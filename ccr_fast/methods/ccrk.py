"""CCR^k (docs/methods.md, "ccrk"): 1-to-K contrastive learning + multilingual ITM with hard sampling + cross-modal MLM.

Batches hold B images, each with K captions (one per language, fixed order, image-major: text ``i·K + k``).

* ``mode="pretrain"``: ``L = L_1toK + L_MITM + L_CMLM`` (unweighted by default; ``w_*`` scale/ablate them).
  ``L_1toK = one_to_k_loss(I, T, 1/τ, t2i_divisor)`` with a learnable τ (init 0.07, clamped to
  [``temp_min``, ``temp_max``] before every step). MITM: one hard positive language per image, a hard negative
  image per positive text and a hard negative text per image, sampled from the ITC similarities without gradient
  (:func:`sample_mitm`); CE of the ITM head over the 3B pairs. CMLM on the chosen positive texts
  (:func:`mask_tokens`), conditioned on the image through the fusion encoder.
* ``mode="finetune"``: id-aware ITC (all K captions of an image are positives, row-normalised labels, i.e.
  ``one_to_k_loss(..., t2i_divisor="1")``) + ITM with a uniformly chosen positive; τ not clamped; no MLM.
* ``one_to_one=True`` (the ``cclm_easy`` ablation): 1-to-1 ITC (``clip_loss``) on one random language per image.
* ``itc_loss="sigmoid"``: the ITC term is SigLIP's pairwise sigmoid loss (``sigmoid_loss`` with the K texts of each
  image as its positives; ``SigLipLoss`` across ranks) with a learnable scale ``exp(t')`` and bias, initialised as
  in SigLIP (``sigmoid_scale_init`` 10, ``sigmoid_bias_init`` −10) and not clamped; it replaces τ everywhere.

Inference is two-stage: ITC cosine → top ``k_test`` candidates (``ccr_fast.retrieval.topk``) → re-scored by the ITM
positive logit (:meth:`CCRk.itm_scores`), every non-candidate ranked below them (:meth:`CCRk.score`).
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import losses as L
from ..config import ConfigError
from ..data import CCRkDataset
from ..models.fusion import FusionEncoder
from ..models.heads import ITMHead, MLMHead
from ..models.text import masked_mean
from ..models.visual import build_visual
from .base import Method, build_text_backbone, dist_info


@torch.no_grad()
def sample_mitm(sim: torch.Tensor, k: int, index: Optional[torch.Tensor] = None, positive_sampling: int = 1,
                generator: Optional[torch.Generator] = None):
    """Hard positive/negative sampling for MITM from ITC logits.

    Args:
        sim: ``[B, B·K]`` image-to-text logits (texts image-major). k: K.
        index: ``[B]`` visual ids; texts of images sharing an id are positives too (never drawn as negatives).
        positive_sampling: 0 uniform; 1 ∝ max(W) + 1e-5 − W over the image's K texts (W = row softmax + 1e-5);
            2 the same rule on the raw logits.
    Returns:
        ``(pos_text [B], neg_image [B], neg_text [B])`` int64 indices.
    Raises:
        ValueError: fewer than 2 distinct images in the batch (no negative exists).
    """
    b = sim.shape[0]
    if sim.shape[1] != b * k:
        raise ValueError(f"sim must be [B, B*K] = [{b}, {b * k}], got {tuple(sim.shape)}")
    index = torch.arange(b, device=sim.device) if index is None else index.to(sim.device)
    if index.unique().numel() < 2:
        raise ValueError("MITM needs at least 2 distinct images in the batch to draw negatives")
    owner = index.repeat_interleave(k)  # [BK] visual id of each text
    positive = index.unsqueeze(1) == owner.unsqueeze(0)  # [B, BK]
    w_i2t = sim.float().softmax(1) + 1e-5
    w_t2i = sim.float().t().softmax(1) + 1e-5  # [BK, B]
    own = w_i2t.view(b, b, k)[torch.arange(b), torch.arange(b)]  # [B, K] the image's own K texts
    if positive_sampling == 0:
        pw = torch.ones_like(own)
    elif positive_sampling == 1:
        pw = w_i2t.max() + 1e-5 - own
    elif positive_sampling == 2:
        raw = sim.float().view(b, b, k)[torch.arange(b), torch.arange(b)]
        pw = sim.float().max() + 1e-5 - raw
    else:
        raise ValueError(f"positive_sampling must be 0, 1 or 2, got {positive_sampling}")
    pos_k = torch.multinomial(pw.clamp_min(1e-12), 1, generator=generator).squeeze(1)
    pos_text = torch.arange(b, device=sim.device) * k + pos_k
    w_i2t = w_i2t.masked_fill(positive, 0.0)
    w_t2i = w_t2i.masked_fill(positive.t(), 0.0)
    neg_image = torch.multinomial(w_t2i[pos_text], 1, generator=generator).squeeze(1)
    neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return pos_text, neg_image, neg_text


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
                special_ids: Sequence[int], prob: float = 0.4, max_masks: int = 12, span_prob: float = 0.2,
                generator: Optional[random.Random] = None):
    """CMLM masking (docs/methods.md, "ccrk").

    Per row, n = min(max_masks, max(1, round(prob·len))) positions among the real (non-special, non-padding)
    tokens; with probability ``span_prob`` a pick extends to a span of 2–3 adjacent tokens. Each masked position
    becomes the mask token (80%), a random non-special token (10%) or stays (10%). [CLS]/[SEP]/padding are never
    masked.

    Returns:
        ``(masked_ids [N, L], labels [N, L])`` with labels −100 outside the masked positions.
    """
    rng = generator or random.Random()
    ids = input_ids.clone()
    labels = torch.full_like(input_ids, -100)
    special = set(int(s) for s in special_ids)
    for r in range(ids.shape[0]):
        cand = [j for j in range(ids.shape[1]) if attention_mask[r, j] and int(input_ids[r, j]) not in special]
        if not cand:
            continue
        n = min(max_masks, max(1, int(round(prob * len(cand)))))
        n = min(n, len(cand))
        chosen: list = []
        free = set(cand)
        while len(chosen) < n and free:
            start = rng.choice(sorted(free))
            span = rng.choice((2, 3)) if rng.random() < span_prob else 1
            for j in range(start, start + span):
                if j in free and len(chosen) < n:
                    chosen.append(j)
                    free.discard(j)
        for j in chosen:
            labels[r, j] = input_ids[r, j]
            u = rng.random()
            if u < 0.8:
                ids[r, j] = mask_token_id
            elif u < 0.9:
                tok = rng.randrange(vocab_size)
                while tok in special:
                    tok = rng.randrange(vocab_size)
                ids[r, j] = tok
    return ids, labels


def id_aware_itc(img: torch.Tensor, txt: torch.Tensor, index: torch.Tensor, k: int, scale) -> torch.Tensor:
    """ITC where every text of the same visual item (``index``) is a positive, as CCR^k's fine-tuning ITC.

    ``img [B, d]``, ``txt [B·K, d]`` image-major, ``index [B]`` visual ids (repeats allowed: the copies of an
    item share all their texts as positives). ``L = ½(L_i2t + L_t2i)`` with row-normalised soft targets. Local to
    the process (no cross-rank gather).
    """
    owner = index.to(img.device).repeat_interleave(k)
    pos = (index.to(img.device).unsqueeze(1) == owner.unsqueeze(0)).to(img.dtype)  # [B, BK]
    logits = img @ txt.t() * scale
    i2t = -((pos / pos.sum(1, keepdim=True)) * logits.log_softmax(1)).sum(1).mean()
    post = pos.t()
    t2i = -((post / post.sum(1, keepdim=True)) * logits.t().log_softmax(1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


class TextCenter(nn.Module):
    """Subtracts the mean of the (normalised) pooled caption embeddings ``[N, H]``: a running mean updated from
    every training batch (momentum 0.1, the first batch sets it; no gradient), fixed in eval. Removes the common
    direction that all captions of a pretrained encoder share, so cosines spread out."""

    def __init__(self, width: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                m = x.detach().float().mean(0)
                self.mean.copy_(m if int(self.seen) == 0 else (1 - self.momentum) * self.mean + self.momentum * m)
                self.seen += 1
        return x - self.mean.to(x.dtype)


class CCRk(Method):
    name = "ccrk"
    resizable_buffers = ("qb_text", "qb_visual", "rmix_mu", "rmix_scale", "rmix_W", "rmix_b")

    def __init__(self, cfg):
        super().__init__(cfg)
        m, c = cfg.model, cfg.ccrk
        if c.mode not in ("pretrain", "finetune"):
            raise ValueError(f"ccrk.mode must be 'pretrain' or 'finetune', got {c.mode!r}")
        if c.pool not in ("cls", "mean"):
            raise ValueError(f"ccrk.pool must be 'cls' or 'mean', got {c.pool!r}")
        self.text = build_text_backbone(cfg, self.tokenizer)
        h = self.text.hidden_size
        if c.text_proj == "identity":
            if m.embed_dim != h:
                raise ConfigError(f"ccrk.text_proj='identity' needs model.embed_dim equal to the text encoder's "
                                  f"width {h}, got {m.embed_dim}")
            self.text_proj = nn.Identity()
        elif c.text_proj == "linear":
            self.text_proj = nn.Linear(h, m.embed_dim)
        else:
            raise ConfigError(f"ccrk.text_proj must be 'linear' or 'identity', got {c.text_proj!r}")
        self.visual = build_visual(m.visual_encoder, m.visual_dim, m.visual_hidden, dropout=m.dropout)
        self.text_center = TextCenter(h) if c.text_center else None
        if c.querybank and c.k_test:
            raise ConfigError("ccrk.querybank normalises ITC ranking; it cannot be combined with the ITM re-rank "
                              f"(ccrk.k_test={c.k_test}); set one of them off")
        if c.querybank and not c.querybank_beta > 0:
            raise ConfigError(f"ccrk.querybank_beta: expected a positive float, got {c.querybank_beta}")
        # query bank (ccrk.querybank): embeddings of the training captions and images, refreshed from the training
        # data at every evaluation of a training run and saved with the weights for later evaluations
        self.register_buffer("qb_text", torch.zeros(0, m.embed_dim))
        self.register_buffer("qb_visual", torch.zeros(0, m.embed_dim))
        self._qb_data = None
        # validation choices (choose_on_validation): β from querybank_betas, the ridge mix weight and its λ
        if c.querybank_betas:  # (kept, unused, when a checkpoint is ranked with ccrk.querybank off)
            if min(c.querybank_betas) <= 0:
                raise ConfigError(f"ccrk.querybank_betas: expected positive values, got {list(c.querybank_betas)}")
            self.register_buffer("qb_beta", torch.tensor(float(c.querybank_betas[0])))
        if c.ridge_mix:
            if min(c.ridge_mix) < 0 or max(c.ridge_mix) >= 1:
                raise ConfigError(f"ccrk.ridge_mix: expected weights in [0, 1), got {list(c.ridge_mix)}")
            if c.k_test:
                raise ConfigError("ccrk.ridge_mix mixes ITC ranking; it cannot be combined with the ITM re-rank "
                                  f"(ccrk.k_test={c.k_test}); set one of them off")
            if not c.ridge_mix_lambdas or min(c.ridge_mix_lambdas) <= 0:
                raise ConfigError(f"ccrk.ridge_mix_lambdas: expected positive values, got {list(c.ridge_mix_lambdas)}")
            self.register_buffer("rmix_w", torch.zeros(()))
            for name in ("rmix_mu", "rmix_scale", "rmix_b"):
                self.register_buffer(name, torch.zeros(0))
            self.register_buffer("rmix_W", torch.zeros(0, 0))
        self._train_data = None
        self._ridge_data = None  # ccrk.ridge_init: the training data, until the first training step initialises
        if c.ridge_init and (c.text_proj != "identity" or c.vision_proj != "identity"
                             or m.visual_encoder != "norm_linear"):
            raise ConfigError("ccrk.ridge_init needs ccrk.text_proj='identity', ccrk.vision_proj='identity' and "
                              f"model.visual_encoder='norm_linear', got {c.text_proj!r}, {c.vision_proj!r}, "
                              f"{m.visual_encoder!r}")
        if c.ridge_init < 0:
            raise ConfigError(f"ccrk.ridge_init: expected a ridge strength >= 0 (0 = off), got {c.ridge_init}")
        if c.vision_proj == "identity":  # the visual encoder maps straight into the common space
            if m.visual_hidden != m.embed_dim:
                raise ConfigError(f"ccrk.vision_proj='identity' needs model.visual_hidden == model.embed_dim, got "
                                  f"{m.visual_hidden} and {m.embed_dim}")
            self.vision_proj = nn.Identity()
        elif c.vision_proj == "linear":
            self.vision_proj = nn.Linear(m.visual_hidden, m.embed_dim)
        else:
            raise ConfigError(f"ccrk.vision_proj must be 'linear' or 'identity', got {c.vision_proj!r}")
        if c.itc_loss not in ("softmax", "sigmoid"):
            raise ConfigError(f"ccrk.itc_loss must be 'softmax' or 'sigmoid', got {c.itc_loss!r}")
        if c.itc_loss == "sigmoid":  # SigLIP: scale exp(t') and bias, both learnable, no temperature clamp
            if c.id_aware:
                raise ConfigError("ccrk.itc_loss='sigmoid' labels each image's own texts; it cannot be combined "
                                  "with ccrk.id_aware (set one of them off)")
            if not c.sigmoid_scale_init > 0:
                raise ConfigError(f"ccrk.sigmoid_scale_init: expected a positive float, got {c.sigmoid_scale_init}")
            self.itc_log_scale = nn.Parameter(torch.tensor(math.log(float(c.sigmoid_scale_init))))
            self.itc_bias = nn.Parameter(torch.tensor(float(c.sigmoid_bias_init)))
        else:
            self.temp = nn.Parameter(torch.tensor(float(c.temp_init)))
        self.fusion = FusionEncoder(h, m.visual_hidden, c.fusion_width, c.fusion_layers, heads=4, dropout=m.dropout)
        self.itm_head = ITMHead(c.fusion_width)
        self.mlm_head = MLMHead(c.fusion_width, len(self.tokenizer)) if c.mode == "pretrain" else None
        self.special_ids = list(self.tokenizer.all_special_ids)
        self.rng = random.Random(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        rank, world = dist_info()
        self.rank = rank
        self.itc_k = None
        self._dist = (rank, world)

    # --- data / scorer ----------------------------------------------------------------------------------------
    def train_dataset(self, data):
        """K-language groups: every item with a caption in each of ``languages`` (image-major texts)."""
        self._qb_data = data if self.mcfg.querybank else None
        self._ridge_data = data if self.mcfg.ridge_init else None
        self._train_data = data if self.mcfg.ridge_mix else None
        return CCRkDataset(data, list(self.cfg.languages), groups=self.mcfg.caption_groups)

    @torch.no_grad()
    def refresh_querybank(self, data=None, batch_size: int = 256) -> None:
        """Embed every caption (in ``languages``) and every visual item of the training data into the banks."""
        data = self._qb_data if data is None else data
        texts = [t for lang in self.cfg.languages for caps in data.captions.get(lang, []) for t in caps if t]
        if not texts or len(data) == 0:
            raise ValueError("ccrk.querybank: the training data has no caption in languages "
                             f"{list(self.cfg.languages)}")
        self.qb_text = self.encode_text(texts, batch_size=batch_size)
        self.qb_visual = self.rank_visual(data.features, batch_size=batch_size)

    def _querybank_encoders(self):
        """Encoders of query-bank-normalised embeddings (:mod:`ccr_fast.eval.querybank`)."""
        from ..eval.querybank import querybank_encoders

        beta = float(self.qb_beta) if self.mcfg.querybank_betas else float(self.mcfg.querybank_beta)
        return querybank_encoders(self.encode_text, self.rank_visual, self.qb_text, self.qb_visual, beta)

    # --- validation choices: query-bank β and the ridge mix ---------------------------------------------------
    @torch.no_grad()
    def rank_visual(self, features, batch_size: int = 256) -> torch.Tensor:
        """The visual side of ITC ranking ``[G, d]``: :meth:`encode_visual`, or with ``ccrk.ridge_mix`` and a chosen
        weight ``w > 0``, ``(1 - w)·v_learned + w·v_ridge`` (so that text·visual is the weighted sum of the two
        cosines; no longer unit norm)."""
        v = self.encode_visual(features, batch_size)
        if not self.mcfg.ridge_mix or float(self.rmix_w) == 0.0:
            return v
        w = float(self.rmix_w)
        return (1.0 - w) * v + w * self._ridge_embed(features, batch_size).to(v)

    def _ridge_embed(self, features, batch_size: int = 256) -> torch.Tensor:
        """The ridge map's L2-normalised embedding ``[G, d]`` of pooled features ``[G, Dv]`` (in batches)."""
        import numpy as np

        if self.rmix_W.numel() == 0:
            raise ValueError("ccrk.ridge_mix: the ridge map is not fitted (train this model, or load a checkpoint "
                             "saved by its training run)")
        shape = np.shape(features)
        if len(shape) != 2 or shape[1] != self.rmix_W.shape[0]:
            raise ValueError(f"ccrk.ridge_mix: expected pooled features [G, {self.rmix_W.shape[0]}], got {shape}")
        out = []
        for i in range(0, shape[0], batch_size):
            x = torch.from_numpy(np.array(features[i:i + batch_size], dtype=np.float32)).to(self.rmix_W.device)
            out.append(F.normalize(((x - self.rmix_mu) / self.rmix_scale) @ self.rmix_W + self.rmix_b, dim=-1))
        return torch.cat(out) if out else self.rmix_b.new_zeros(0, self.rmix_W.shape[1])

    def _caption_pairs(self, data, what: str):
        """``(pairs, texts)``: every non-empty training caption in ``languages`` and the row of its item."""
        pairs, texts = [], []
        for lang in self.cfg.languages:
            for i, caps in enumerate(data.captions.get(lang, [])):
                for t in caps:
                    if t:
                        pairs.append(i)
                        texts.append(t)
        if not texts:
            raise ValueError(f"{what}: the training data has no caption in {list(self.cfg.languages)}")
        return pairs, texts

    @torch.no_grad()
    def _fit_ridge_mix(self, data, batch_size: int = 256) -> dict:
        """Closed-form ridge maps from the standardised training features to the current text embeddings of
        every training caption (in ``languages``), one per ``ridge_mix_lambdas`` value: ``{λ: (mu, scale, W, b)}``.
        ``W = (ZᵀZ + λ·s·I)⁻¹ ZᵀY`` over the centred (image, caption) pairs, ``s`` the mean eigenvalue of ZᵀZ."""
        pairs, texts = self._caption_pairs(data, "ccrk.ridge_mix")
        y = self.encode_text(texts, batch_size=batch_size).double()
        feats = torch.as_tensor(data.features, dtype=torch.float64, device=y.device)
        if feats.dim() != 2:
            raise ValueError(f"ccrk.ridge_mix: needs pooled features [N, Dv], got {tuple(feats.shape)}")
        mu, scale = feats.mean(0), torch.sqrt(feats.var(0, unbiased=False) + 1e-5)
        z = ((feats - mu) / scale)[torch.as_tensor(pairs, device=y.device)]
        zbar, ybar = z.mean(0), y.mean(0)
        z = z - zbar
        evals, evecs = torch.linalg.eigh(z.t() @ z)
        evals = evals.clamp_min(0)
        proj = evecs.t() @ (z.t() @ (y - ybar))
        out = {}
        for lam in self.mcfg.ridge_mix_lambdas:
            w = evecs @ (proj / (evals + float(lam) * float(evals.mean())).unsqueeze(1))  # [Dv, d]
            out[float(lam)] = (mu.float(), scale.float(), w.float(), (ybar - zbar @ w).float())
        return out

    def _set_ridge_map(self, fit) -> None:
        for name, t in zip(("rmix_mu", "rmix_scale", "rmix_W", "rmix_b"), fit):
            setattr(self, name, t.to(self.rmix_w.device))

    def choose_on_validation(self, val_sets, batch_size: int, metric: str) -> dict:
        """Pick ``querybank_betas``' β and the ridge mix (weight, λ) that score best on ``val_sets``, keep them
        in the buffers saved with the weights, and return them for the validation record."""
        c = self.mcfg
        if not (c.querybank_betas or c.ridge_mix):
            return {}
        from ..eval.scoring import evaluate_method

        if c.querybank and self._qb_data is not None:
            self.refresh_querybank()
        fits = self._fit_ridge_mix(self._train_data) if c.ridge_mix and self._train_data is not None else {}
        grid = [(lam, w) for lam in fits for w in c.ridge_mix if w > 0] + [(None, 0.0)] if fits else [(None, None)]
        betas = list(c.querybank_betas) if c.querybank and c.querybank_betas else [None]
        qb_data, self._qb_data = self._qb_data, None  # the bank of texts is fixed while the grid is scored
        scores, best = {}, None
        try:
            for lam, w in grid:
                if w is not None:
                    if lam is not None:
                        self._set_ridge_map(fits[lam])
                    self.rmix_w.fill_(w)
                    if c.querybank and qb_data is not None:
                        self.qb_visual = self.rank_visual(qb_data.features, batch_size=256)
                for beta in betas:
                    if beta is not None:
                        self.qb_beta.fill_(beta)
                    score = float(evaluate_method(self, val_sets, batch_size)[metric])
                    key = (lam, w, beta)
                    scores[key] = score
                    if best is None or score > scores[best]:
                        best = key
        finally:
            self._qb_data = qb_data
        lam, w, beta = best
        rec = {}
        if w is not None:
            if lam is not None:
                self._set_ridge_map(fits[lam])
            self.rmix_w.fill_(w)
            rec.update(ridge_mix=w, ridge_lambda=lam)
        if beta is not None:
            self.qb_beta.fill_(beta)
            rec["querybank_beta"] = beta
        rec["val_by_choice"] = {", ".join(f"{n} {v:g}" for n, v in zip(("lambda", "w", "beta"), k) if v is not None):
                                round(v, 4) for k, v in scores.items()}
        return rec

    def eval_languages(self):
        return list(self.cfg.languages)

    def ranking_encoders(self):
        """The query-bank-normalised encoders with ``ccrk.querybank``, else the plain ones (ITC ranking)."""
        return self._querybank_encoders() if self.mcfg.querybank else (self.encode_text, self.rank_visual)

    def score(self, eval_sets, batch_size: int = 128, k_test=None) -> dict:
        """ITC cosine ranking, or with ``k_test > 0`` the ITM re-rank of the top ``k_test`` ITC candidates."""
        k = self.mcfg.k_test if k_test is None else int(k_test)
        if k > 0:
            from ..eval.scoring import rerank_results

            return rerank_results(self, eval_sets, batch_size, k)
        if self.mcfg.querybank:
            from ..eval import evaluate_encoders

            if self._qb_data is not None:
                self.refresh_querybank()
            enc_text, enc_visual = self.ranking_encoders()
            return evaluate_encoders(enc_text, enc_visual, eval_sets, fusion_weight=self.translate_test_weight,
                                     batch_size=batch_size)
        return super().score(eval_sets, batch_size)

    def load_state_dict(self, state_dict, strict: bool = True, **kw):
        self._ridge_data = None  # loaded (resumed) weights are never overwritten by the ridge initialisation
        return super().load_state_dict(state_dict, strict=strict, **kw)

    @torch.no_grad()
    def init_from_ridge(self, data, batch_size: int = 256) -> None:
        """``ccrk.ridge_init = λ``: start from the closed-form ridge map (as ``method="linear"``, in the
        standardised visual space). Text targets: the centred, normalised frozen embeddings of every training
        caption (the centre also seeds the running text mean); visual: the training images standardised with their
        own mean/variance (also set as the BatchNorm running statistics). ``W = (ZᵀZ + λ·s·I)⁻¹ ZᵀY`` over every
        (image, caption) pair, ``s`` the mean eigenvalue of ZᵀZ; bias = mean target."""
        pairs, texts = self._caption_pairs(data, "ccrk.ridge_init")
        y = self.encode_text(texts, batch_size=batch_size).double()  # normalised pooled (centre still zero)
        centre = y.mean(0)
        self.text_center.mean.copy_(centre.float())
        self.text_center.seen.fill_(1)
        y = F.normalize(y - centre, dim=-1)
        feats = torch.as_tensor(data.features, dtype=torch.float64, device=y.device)
        norm = self.visual.norm
        mu, var = feats.mean(0), feats.var(0, unbiased=False)
        norm.running_mean.copy_(mu.float())
        norm.running_var.copy_(var.float())
        z = ((feats - mu) / torch.sqrt(var + norm.eps))[torch.as_tensor(pairs, device=y.device)]
        z = z - z.mean(0)
        evals, evecs = torch.linalg.eigh(z.t() @ z)
        lam = float(self.mcfg.ridge_init) * float(evals.clamp_min(0).mean())
        w = evecs @ ((evecs.t() @ (z.t() @ y)) / (evals.clamp_min(0) + lam).unsqueeze(1))  # [Dv, d]
        self.visual.linear.weight.copy_(w.t().float())
        self.visual.linear.bias.copy_(y.mean(0).float())

    # --- embeddings -------------------------------------------------------------------------------------------
    def text_states(self, tok, use_cache: bool = True):
        if use_cache:
            return self.text(tok["input_ids"], tok["attention_mask"])
        return self.text._run(tok["input_ids"], tok["attention_mask"])

    def text_embed_from_states(self, states, mask):
        pooled = states[:, 0] if self.mcfg.pool == "cls" else masked_mean(states, mask)
        if self.text_center is not None:
            pooled = self.text_center(F.normalize(pooled, dim=-1))
        return F.normalize(self.text_proj(pooled), dim=-1)

    def embed_text(self, tok):
        return self.text_embed_from_states(self.text_states(tok), tok["attention_mask"])

    def visual_hidden(self, visual, mask=None):
        """Pooled visual states ``[N, H]`` (token grids ``[N, L, D]`` are pooled by the visual encoder)."""
        return self.visual(visual, mask)

    def visual_tokens(self, visual, mask=None):
        """What the fusion encoder cross-attends to: ``([N, L, H], mask [N, L])`` for token grids ``[N, L, D]``
        (patch / region / frame features; the "mlp"/"linear" visual encoder applied to every token), else the
        pooled ``([N, H], None)``."""
        if visual.dim() == 3 and self.cfg.model.visual_encoder in ("mlp", "linear"):
            n, length, d = visual.shape
            tokens = self.visual(visual.reshape(n * length, d)).view(n, length, -1)
            return tokens, (mask if mask is not None else visual.new_ones(n, length))
        return self.visual(visual, mask), None

    def embed_visual(self, visual, mask=None):
        return F.normalize(self.vision_proj(self.visual_hidden(visual, mask)), dim=-1)

    def logit_scale(self):
        if self.mcfg.itc_loss == "sigmoid":
            return self.itc_log_scale.exp()
        return 1.0 / self.temp

    def itm_logits(self, states, mask, vis_hidden, vis_mask=None):
        return self.itm_head(self.fusion(states, mask, vis_hidden, vis_mask)[:, 0])

    # --- training ---------------------------------------------------------------------------------------------
    def clamp_temperature(self):
        if self.mcfg.itc_loss == "sigmoid":
            return
        with torch.no_grad():
            self.temp.clamp_(self.mcfg.temp_min, self.mcfg.temp_max)

    def _itc(self, img, txt, k, index=None):
        c = self.mcfg
        rank, world = self._dist
        if c.id_aware and index is not None:
            return id_aware_itc(img, txt, index, k, self.logit_scale())
        if c.itc_loss == "sigmoid":
            if world > 1:
                if self.itc_k != ("sigmoid", k):
                    self._itc_mod = L.SigLipLoss(rank=rank, world_size=world)
                    self.itc_k = ("sigmoid", k)
                return self._itc_mod(img, txt.view(img.shape[0], k, -1), self.logit_scale(), self.itc_bias)
            return L.sigmoid_loss(img, txt.view(img.shape[0], k, -1), self.logit_scale(), self.itc_bias)
        divisor = "1" if c.mode == "finetune" else c.t2i_divisor
        if world > 1:
            if self.itc_k != k:
                self._itc_mod = L.OneToKLoss(k, t2i_divisor=divisor, gather_with_grad=True, rank=rank, world_size=world)
                self.itc_k = k
            return self._itc_mod(img, txt.view(img.shape[0], k, -1), self.logit_scale())
        return L.one_to_k_loss(img, txt.view(img.shape[0], k, -1), self.logit_scale(), t2i_divisor=divisor)

    def loss_dict(self, batch):
        c = self.mcfg
        if c.mode == "pretrain" and self.training:
            self.clamp_temperature()
        if self._ridge_data is not None and self.training:
            self.init_from_ridge(self._ridge_data)
            self._ridge_data = None
        tok, k = batch["texts"], int(batch["K"])
        b = batch["visual"].shape[0]
        states = self.text_states(tok)
        txt = self.text_embed_from_states(states, tok["attention_mask"])  # [BK, d]
        vh = self.visual_hidden(batch["visual"], batch.get("visual_mask"))
        img = F.normalize(self.vision_proj(vh), dim=-1)
        out = {}
        if c.one_to_one:
            pick = torch.tensor([i * k + self.rng.randrange(k) for i in range(b)], device=txt.device)
            out["itc"] = (L.sigmoid_loss(img, txt[pick], self.logit_scale(), self.itc_bias)
                          if c.itc_loss == "sigmoid" else L.clip_loss(img, txt[pick], self.logit_scale()))
        else:
            out["itc"] = self._itc(img, txt, k, batch.get("index"))
        weights = {"itc": c.w_itc, "itm": c.w_itm, "mlm": c.w_mlm if c.mode == "pretrain" else 0.0}
        if c.w_itm or (c.w_mlm and c.mode == "pretrain"):
            sim = img @ txt.t() * self.logit_scale()
            ps = 0 if c.mode == "finetune" else c.positive_sampling
            pos_t, neg_i, neg_t = sample_mitm(sim.detach().cpu(), k, batch["index"].cpu(), ps, self.gen)
            pos_t, neg_i, neg_t = pos_t.to(txt.device), neg_i.to(txt.device), neg_t.to(txt.device)
            m = tok["attention_mask"]
            vt, vm = self.visual_tokens(batch["visual"], batch.get("visual_mask"))  # tokens for the fusion encoder
            if c.w_itm:
                s_all = torch.cat([states[pos_t], states[pos_t], states[neg_t]])
                m_all = torch.cat([m[pos_t], m[pos_t], m[neg_t]])
                v_all = torch.cat([vt, vt[neg_i], vt])
                vm_all = None if vm is None else torch.cat([vm, vm[neg_i], vm])
                width = int(m_all.sum(1).max())  # drop all-padding columns
                logits = self.itm_logits(s_all[:, :width], m_all[:, :width], v_all, vm_all)
                labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
                out["itm"] = F.cross_entropy(logits, labels)
            if c.w_mlm and c.mode == "pretrain":
                ids, lab = mask_tokens(tok["input_ids"][pos_t].cpu(), m[pos_t].cpu(), self.tokenizer.mask_token_id,
                                       len(self.tokenizer), self.special_ids, c.mask_prob, c.max_masks, c.span_prob,
                                       self.rng)
                ids, lab = ids.to(txt.device), lab.to(txt.device)
                ms = self.text_states({"input_ids": ids, "attention_mask": m[pos_t]}, use_cache=False)
                h = self.fusion(ms, m[pos_t], vt, vm)
                sel = lab != -100  # the vocabulary projection only on masked positions
                out["mlm"] = F.cross_entropy(self.mlm_head(h[sel]), lab[sel])
        return self.weighted_total(out, weights)

    # --- re-ranking -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def itm_scores(self, text_tok, visual, text_idx: torch.Tensor, vis_idx: torch.Tensor,
                   batch_size: int = 256, visual_mask=None) -> torch.Tensor:
        """ITM positive logits for pairs ``(text_idx[p], vis_idx[p])`` of tokenised texts and visual features
        (``[G, D]`` pooled or ``[G, L, D]`` token grids with an optional ``visual_mask [G, L]``)."""
        was = self.training
        self.eval()
        states = self.text_states(text_tok)
        vh, vmask = self.visual_tokens(visual, visual_mask)
        out = []
        for i in range(0, len(text_idx), batch_size):
            t, v = text_idx[i:i + batch_size], vis_idx[i:i + batch_size]
            m = text_tok["attention_mask"][t]
            width = int(m.sum(1).max())
            out.append(self.itm_logits(states[t][:, :width], m[:, :width], vh[v],
                                       None if vmask is None else vmask[v])[:, 1])
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

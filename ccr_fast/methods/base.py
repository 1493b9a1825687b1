"""The interface every method implements, and the pieces they share.

A method is an ``nn.Module`` built from a :class:`ccr_fast.config.Config`. The training loop
(:mod:`ccr_fast.training.loop`) and evaluation (:mod:`ccr_fast.eval.scoring`) only call these hooks and never
name a method:

* ``Method.build(cfg)`` — construct the model (text encoder from a local path, heads, visual encoder);
* data: ``train_dataset(data)`` — the method's training ``Dataset`` over a :class:`ccr_fast.data.CCRData`
  (NRCCR tuples, CL2CM / baseline pairs, CCR^k K-language groups); ``eval_languages()`` — the languages its
  validation/test sets hold; ``collate`` — the DataLoader ``collate_fn`` (tokenisation happens there);
* training: ``loss_dict(batch)`` — named losses plus ``"total"`` (weights from the method's config section);
  ``param_groups(lr, head_lr_mult)`` — the main optimiser's parameter groups; ``extra_step()`` — extra optimiser
  steps after each main step (NRCCR: the discriminator's Adam step), with ``extra_state``/``load_extra_state``;
* closed-form methods (``closed_form = True``): ``fit(train_set, val_sets, metric) -> validation record``
  replaces the optimiser steps;
* evaluation: ``score(eval_sets, batch_size)`` — the scorer (default: the ITC/cosine ranking of
  :func:`ccr_fast.eval.evaluate_encoders` on ``encode_text``/``encode_visual``, with ``translate_test_weight``
  when the method sets one; CCR^k re-ranks with ITM).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..config import Config, ConfigError
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
    n_layers = getattr(enc.config, "num_hidden_layers", None)
    if m.trainable_layers and n_layers is not None:
        from ..models.text import _as_layer_ids

        bad = sorted(i for i in _as_layer_ids(m.trainable_layers) if not 0 <= i < n_layers)
        if bad:
            raise ConfigError(f"model.trainable_layers: layers {bad} do not exist in the text encoder "
                              f"({n_layers} layers, 0..{n_layers - 1})")
    layers = m.trainable_layers
    top = int(m.train_top_layers or 0)
    if top:
        if n_layers is None or not 0 < top <= n_layers:
            raise ConfigError(f"model.train_top_layers: expected 1..{n_layers} (the encoder's layers), got {top}")
        if layers is not None:  # None already trains every layer
            from ..models.text import _as_layer_ids

            layers = sorted(_as_layer_ids(layers) | set(range(n_layers - top, n_layers)))
    freeze_encoder(enc, layers)
    return TextBackbone(enc, cache=m.cache_text_states)


class Method(nn.Module):
    """Base class: tokenizer, collate, encoders for evaluation."""

    name = "method"
    closed_form = False  # True: ``fit(train_set, val_sets, metric)`` is the whole training (no optimiser steps)
    translate_test_weight: Optional[float] = None  # NRCCR: weight of the MT-to-source query at inference (test)
    val_translate_test_weight: Optional[float] = None  # the weight used while validating (None = the test one)
    resizable_buffers: tuple = ()  # buffers whose size comes from the checkpoint (e.g. query banks)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kw):
        for name in self.resizable_buffers:  # take the checkpoint's size before the strict copy
            if prefix + name in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.mcfg = cfg.method_cfg()
        self.tokenizer = load_tokenizer(cfg.text_encoder)
        self.collate = Collator(self.tokenizer, cfg.model.max_tokens, cfg.model.text_prefix)

    @classmethod
    def build(cls, cfg: Config) -> "Method":
        return cls(cfg)

    # --- data -----------------------------------------------------------------------------------------------
    def source_and_targets(self):
        """``(src, [tgt, ...])`` from ``cfg.languages``: the first is the source, the rest the targets."""
        langs = list(self.cfg.languages)
        return langs[0], (langs[1:] or langs[:1])

    def train_dataset(self, data):  # pragma: no cover - abstract
        """The training ``Dataset`` of this method over a :class:`ccr_fast.data.CCRData`."""
        raise NotImplementedError

    def eval_languages(self) -> List[str]:
        """Languages of the validation/test sets (default: the target languages, i.e. ``languages[1:]``)."""
        return list(self.source_and_targets()[1])

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

    def param_groups(self, lr: float, head_lr_mult: float = 1.0) -> List[dict]:
        """The main optimiser's groups: the text encoder's trainable layers at ``lr``, the rest (heads, visual
        side, fusion) at ``lr * head_lr_mult``; a trainable vision tower's top (``tower_top``) at ``lr``, like the
        text encoder. Empty groups are left out."""
        enc = {id(p) for mod in self.modules() if isinstance(mod, TextBackbone) for p in mod.parameters()}
        top = getattr(self, "tower_top", None)
        vis = {id(p) for p in top.parameters()} if top is not None else set()
        main = self.main_parameters()
        groups = [{"params": [p for p in main if id(p) in enc], "lr": lr, "name": "text_encoder"},
                  {"params": [p for p in main if id(p) in vis], "lr": lr, "name": "visual_tower"},
                  {"params": [p for p in main if id(p) not in enc and id(p) not in vis], "lr": lr * head_lr_mult,
                   "name": "heads"}]
        return [g for g in groups if g["params"]]

    def inert_terms(self) -> Dict[str, str]:
        """Loss terms of the total that cannot move any parameter the retrieval embeddings (or a teacher) use in
        this configuration, with the reason (e.g. a term on encoder states while the encoder is frozen). Methods
        warn about them at construction; ``python_tests/methods/test_loss_terms.py`` checks every other term
        reaches a trained parameter."""
        return {}

    def warn_inert(self) -> None:
        """One warning naming the inert terms (see :meth:`inert_terms`), if any."""
        inert = self.inert_terms()
        if inert:
            import warnings

            warnings.warn(f"{self.name}: loss term(s) that cannot act in this configuration: "
                          + "; ".join(f"{k}: {v}" for k, v in inert.items()), stacklevel=3)

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

    def ranking_encoders(self):
        """``(encode_text, encode_visual)`` whose inner products are this method's ranking scores: what
        :meth:`score` ranks and what a search index (:mod:`ccr_fast.inference`) holds. Default: the plain
        L2-normalised encoders; query-bank methods return the augmented encoders of :mod:`ccr_fast.eval.querybank`."""
        return self.encode_text, self.encode_visual

    def choose_on_validation(self, val_sets, batch_size: int, metric: str) -> dict:
        """Ranking choices made on ``val_sets`` at each validation of a training run (e.g. CCR^k's query-bank β),
        kept in the method's buffers; returns them for the validation record. Default: none."""
        return {}

    def score(self, eval_sets, batch_size: int = 128, **kw) -> dict:
        """Evaluate on ``eval_sets``: a result dict shaped like :func:`ccr_fast.eval.evaluate_encoders`'."""
        from ..eval import evaluate_encoders

        enc_text, enc_visual = self.ranking_encoders()
        return evaluate_encoders(enc_text, enc_visual, eval_sets,
                                 fusion_weight=self.translate_test_weight, batch_size=batch_size)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], lang: Optional[str] = None, batch_size: int = 128) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, d]`` (float32, on the model's device), in eval mode."""
        was = self.training
        self.eval()
        out = [self.embed_text(self.tokenize(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        self.train(was)
        return torch.cat(out).float()

    def media_features(self, images) -> np.ndarray:
        """What :meth:`encode_visual` takes, from image paths / PIL images: the configured ``visual_encoder``'s
        outputs (``[N, D]`` or ``[N, T, D]`` float32), as the training data were encoded (frozen tower)."""
        if not self.cfg.visual_encoder:
            raise ValueError(f"images: this {self.name} model was trained on feature arrays (no visual_encoder); "
                             f"pass its features [N, {self.cfg.model.visual_dim}] instead of images")
        from ..data.media import encode_images
        from ..data.media_data import feature_tower

        tower, proc = feature_tower(self.cfg)  # a trainable tower: its frozen bottom (the top is in the model)
        tower.to(self.device)
        return encode_images(tower, proc, images, batch_size=int(self.cfg.files.media_batch_size)).cpu().numpy()

    @torch.no_grad()
    def encode_media(self, images, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised visual embeddings ``[N, d]`` of image paths / PIL images (:meth:`media_features` →
        :meth:`encode_visual`)."""
        return self.encode_visual(self.media_features(images), batch_size=batch_size)

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

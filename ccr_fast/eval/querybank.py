"""Query-bank normalisation of cosine ranking (an inverted softmax over a bank of TRAINING queries).

A gallery item that is close to many queries (a hub) is ranked first for too many of them. With a bank of training
captions ``T_b`` and training visual items ``V_b`` (embeddings, same space), scores become

    text→visual:  s'(t, v) = t·v − c_v(v),  c_v(v) = logsumexp_b(β t_b·v) / β   (over the training captions)
    visual→text:  s'(v, t) = t·v − c_t(t),  c_t(t) = logsumexp_b(β t·v_b) / β   (over the training images)

``c_t`` is constant along a text→visual ranking and ``c_v`` along a visual→text one, so both directions come from
one pair of augmented embeddings: text ``[t, 1, −c_t(t)]`` and visual ``[v, −c_v(v), 1]`` ([N, d+2]), whose dot
products feed the ordinary ranking path unchanged. No test query or test item enters a normalisation constant.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch

__all__ = ["querybank_encoders"]


def querybank_encoders(encode_text: Callable, encode_visual: Callable, bank_text: torch.Tensor,
                       bank_visual: torch.Tensor, beta: float) -> Tuple[Callable, Callable]:
    """Wrap ``encode_text``/``encode_visual`` (``-> [N, d]``) into encoders of the augmented ``[N, d+2]``
    embeddings above, given the banks ``bank_text [Bt, d]`` and ``bank_visual [Bv, d]``."""
    if bank_text.dim() != 2 or bank_visual.dim() != 2 or bank_text.shape[1] != bank_visual.shape[1]:
        raise ValueError(f"bank_text/bank_visual: expected [Bt, d] and [Bv, d], got {tuple(bank_text.shape)} and "
                         f"{tuple(bank_visual.shape)}")
    if bank_text.shape[0] == 0 or bank_visual.shape[0] == 0:
        raise ValueError("querybank: the query bank is empty (train this model, or load a checkpoint saved by a "
                         "training run with the query bank on)")
    if not beta > 0:
        raise ValueError(f"beta: expected a positive float, got {beta}")
    beta = float(beta)

    def enc_text(texts):
        t = encode_text(texts)
        c = torch.logsumexp(beta * (t @ bank_visual.to(t).t()), 1, keepdim=True) / beta
        return torch.cat([t, torch.ones_like(c), -c], 1)

    def enc_visual(features):
        v = encode_visual(features)
        c = torch.logsumexp(beta * (v @ bank_text.to(v).t()), 1, keepdim=True) / beta
        return torch.cat([v, -c, torch.ones_like(c)], 1)

    return enc_text, enc_visual

"""Text side: a Hugging Face encoder loaded from a local folder, layer freezing, the NRCCR shared text head and the
common-space mapping.

Encoders are only ever loaded from local files: a folder, or a hub id found in the local Hugging Face cache
(:func:`ccr_fast.models.towers.resolve_hf_model`; nothing downloads). The default path is the shipped
``models/multilingual-e5-small-l9-4lang`` (``CCR_FAST_MODELS`` overrides the folder).
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_ENCODER = "multilingual-e5-small-l9-4lang"


def default_encoder_path() -> Path:
    """The shipped encoder folder: ``$CCR_FAST_MODELS/<name>`` if set, else the repository's ``models/<name>``."""
    try:
        from ..paths import models_root

        return models_root() / DEFAULT_ENCODER
    except (ImportError, FileNotFoundError):
        env = os.environ.get("CCR_FAST_MODELS")
        root = Path(env) if env else Path(__file__).resolve().parents[2] / "models"
        return root / DEFAULT_ENCODER


def resolve_encoder_path(path: Optional[Union[str, Path]]) -> Path:
    """A local encoder folder (or a hub id's snapshot in the local HF cache); FileNotFoundError (never contacts a
    hub) when there is none."""
    p = default_encoder_path() if path in (None, "", "default") else Path(os.path.expanduser(str(path)))
    if not p.is_dir() and path not in (None, "", "default"):  # a hub id: looked up in the local HF cache only
        from .towers import resolve_hf_model

        return resolve_hf_model(str(path), what="text_encoder")
    if not p.is_dir() or not (p / "config.json").exists():
        raise FileNotFoundError(f"text_encoder must be a local Hugging Face folder with config.json, got {str(p)!r}")
    return p


def load_tokenizer(path: Optional[Union[str, Path]] = None):
    """The tokenizer of a local encoder folder (loaded once per folder and shared)."""
    return _load_tokenizer(str(resolve_encoder_path(path)))


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_text_encoder(path: Optional[Union[str, Path]] = None) -> nn.Module:
    """``AutoModel`` from a local folder (fp32)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(resolve_encoder_path(path)), dtype=torch.float32)


def tiny_text_encoder(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2, pad_token_id: int = 1,
                      max_positions: int = 128, dropout: float = 0.1) -> nn.Module:
    """A random-init BERT built in code (tests: no weights are read)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=max_positions, pad_token_id=pad_token_id,
                     type_vocab_size=1, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(cfg, add_pooling_layer=False)


def _layer_index(name: str) -> Optional[int]:
    """Encoder layer index of a parameter name, matched on exact dot-separated segments ("layer", "<i>")."""
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layer" and b.isdigit():
            return int(b)
    return None


def _as_layer_ids(layers: Iterable[Union[int, str]]) -> set:
    out = set()
    for x in layers:
        if isinstance(x, int):
            out.add(x)
            continue
        idx = _layer_index(str(x))
        if idx is None and str(x).isdigit():
            idx = int(x)
        if idx is None:
            raise ValueError(f"trainable_layers entries must be ints or names like 'layer.10', got {x!r}")
        out.add(idx)
    return out


def freeze_encoder(model: nn.Module, trainable_layers: Optional[Sequence[Union[int, str]]]) -> List[str]:
    """Freeze everything except the listed encoder layers (NRCCR ``--frozen``); returns the trainable names.

    Layers are matched on exact name segments, so ``"layer.1"`` selects layer 1 only, never layer 10 or 11.
    ``None`` leaves the whole model trainable; ``[]`` freezes it entirely.
    """
    if trainable_layers is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return [n for n, _ in model.named_parameters()]
    keep = _as_layer_ids(trainable_layers)
    names = []
    for n, p in model.named_parameters():
        idx = _layer_index(n)
        on = idx is not None and idx in keep
        p.requires_grad_(on)
        if on:
            names.append(n)
    return names


class TextBackbone(nn.Module):
    """A HF encoder returning last hidden states, with an optional cache for a fully frozen encoder.

    Args:
        encoder: a transformers model whose output has ``last_hidden_state``.
        cache: keep each sequence's states (keyed by its token ids) when the encoder has no trainable parameter
            — a frozen encoder then runs once per distinct caption.
    """

    def __init__(self, encoder: nn.Module, cache: bool = False):
        super().__init__()
        self.encoder = encoder
        self.use_cache = cache
        self._cache: Dict[Tuple[int, ...], torch.Tensor] = {}
        self._cache_at: Optional[int] = None  # the layer whose input states the cache holds (None: final states)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder states, computed on the columns up to the longest sequence and zero-padded back to ``L``."""
        width = int(mask.sum(1).max())
        h = self.encoder(input_ids=ids[:, :width], attention_mask=mask[:, :width]).last_hidden_state
        return F.pad(h, (0, 0, 0, ids.shape[1] - width)) if width < ids.shape[1] else h

    def _layers(self):
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        return layers if isinstance(layers, nn.ModuleList) else None

    def frozen_prefix(self) -> int:
        """How many leading encoder layers are frozen when only a top block of layers trains (its first layer's
        input states are then cacheable); 0 when the embeddings or a lower layer train or the layout is unknown."""
        layers = self._layers()
        if layers is None:
            return 0
        trainable = [i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())]
        rest = [p for n, p in self.encoder.named_parameters() if not n.startswith("encoder.layer.")]
        if not trainable or any(p.requires_grad for p in rest) or trainable != list(range(trainable[0], len(layers))):
            return 0
        return trainable[0]

    def _top(self, h: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
        """Run encoder layers ``start..`` on input states ``h [N, L, H]`` (additive key mask from ``mask``)."""
        ext = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in list(self._layers())[start:]:
            out = layer(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states ``[N, L, H]`` for ``input_ids``/``attention_mask`` ``[N, L]``.

        With ``cache`` on: a frozen encoder runs once per distinct caption; when only the top layers train, the
        input states of the first trained layer are cached and only the trained layers run per call."""
        if not self.use_cache:
            return self._run(input_ids, attention_mask)
        if self.frozen():
            start = None
        else:
            start = self.frozen_prefix() or None
            if start is None:
                return self._run(input_ids, attention_mask)
        if start != self._cache_at:  # the frozen part changed: states cached for another split are stale
            self._cache.clear()
            self._cache_at = start
        width = int(attention_mask.sum(1).max())
        states = self._cached(input_ids[:, :width], attention_mask[:, :width], start)
        if start is not None:  # padding positions stay zero, as in the fully cached path
            m = attention_mask[:, :width]
            states = self._top(states, m, start) * m.unsqueeze(-1).to(states.dtype)
        return F.pad(states, (0, 0, 0, input_ids.shape[1] - width)) if width < input_ids.shape[1] else states

    def _cached(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: Optional[int]) -> torch.Tensor:
        """States ``[N, L, H]`` from the cache (final states, or the input of layer ``start``), computing the
        missing captions in length-sorted chunks without gradient."""
        lengths = attention_mask.sum(1).tolist()
        keys = [tuple(input_ids[i, : int(n)].tolist()) for i, n in enumerate(lengths)]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self._cache}.values(), key=lambda i: lengths[i])
        if missing:
            was = self.encoder.training
            self.encoder.eval()  # cached states are deterministic (no dropout)
            with torch.no_grad():
                for c in range(0, len(missing), 64):  # length-sorted chunks: little padding
                    chunk = missing[c:c + 64]
                    width = int(max(lengths[i] for i in chunk))
                    if start is None:
                        h = self._run(input_ids[chunk, :width], attention_mask[chunk, :width])
                    else:
                        h = self.encoder(input_ids=input_ids[chunk, :width],
                                         attention_mask=attention_mask[chunk, :width],
                                         output_hidden_states=True).hidden_states[start]
                    for j, i in enumerate(chunk):
                        self._cache[keys[i]] = h[j, : int(lengths[i])].detach().clone()
            self.encoder.train(was)
        out = input_ids.new_zeros((input_ids.shape[0], input_ids.shape[1], self.hidden_size), dtype=torch.float32)
        for i, k in enumerate(keys):
            out[i, : len(k)] = self._cache[k]
        return out


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``x [N, L, H]`` over valid positions (``mask [N, L]``); over all L when ``mask`` is None."""
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class LinearLayer(nn.Module):
    """NRCCR input projection: LayerNorm(in) → Dropout → Linear(in, out) → ReLU."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(self.drop(self.norm(x))))


class HeadAttention(nn.Module):
    """NRCCR's single attention block: Q/K project H→``qk_dim``, V projects H→H, scores / sqrt(H/heads),
    additive −10000 mask on the outer product of the query and key masks, output Dense → Dropout → LayerNorm with
    the query added back in self mode and **no residual** in cross mode."""

    def __init__(self, hidden: int, heads: int = 8, qk_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        if qk_dim % heads or hidden % heads:
            raise ValueError(f"qk_dim ({qk_dim}) and hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads, self.hidden, self.qk_dim = heads, hidden, qk_dim
        self.q = nn.Linear(hidden, qk_dim)
        self.k = nn.Linear(hidden, qk_dim)
        self.v = nn.Linear(hidden, hidden)
        self.attn_drop = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, xq: torch.Tensor, mq: torch.Tensor, xkv: Optional[torch.Tensor] = None,
                mkv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Self mode when ``xkv`` is None. Shapes: ``xq [N, Lq, H]``, ``mq [N, Lq]``, ``xkv [N, Lk, H]``."""
        cross = xkv is not None
        if not cross:
            xkv, mkv = xq, mq
        n, lq, lk, h = xq.shape[0], xq.shape[1], xkv.shape[1], self.heads
        q = self.q(xq).view(n, lq, h, -1).transpose(1, 2)
        k = self.k(xkv).view(n, lk, h, -1).transpose(1, 2)
        v = self.v(xkv).view(n, lk, h, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hidden / h)
        pair = mq.to(scores.dtype).unsqueeze(2) * mkv.to(scores.dtype).unsqueeze(1)  # [N, Lq, Lk]
        scores = scores + (1.0 - pair).unsqueeze(1) * -10000.0
        ctx = (self.attn_drop(scores.softmax(-1)) @ v).transpose(1, 2).reshape(n, lq, self.hidden)
        out = self.out_drop(self.dense(ctx))
        return self.norm(out) if cross else self.norm(out + xq)


class NRCCRTextHead(nn.Module):
    """NRCCR "Text_share": projection + learned positions + one attention block + mean pooling.

    Args:
        in_dim: encoder width. hidden: H. heads, qk_dim: attention sizes (8, 512 in NRCCR).
        masked_pool: False = the official mean over the whole padded length; True = masked mean.
    """

    def __init__(self, in_dim: int, hidden: int, heads: int = 8, qk_dim: int = 512, max_positions: int = 250,
                 dropout: float = 0.1, masked_pool: bool = False):
        super().__init__()
        self.proj = LinearLayer(in_dim, hidden, dropout)
        self.pos = nn.Embedding(max_positions, hidden)
        self.pos_norm = nn.LayerNorm(hidden)
        self.pos_drop = nn.Dropout(dropout)
        self.attn = HeadAttention(hidden, heads, qk_dim, dropout)
        self.masked_pool = masked_pool

    def tokens(self, states: torch.Tensor) -> torch.Tensor:
        """Projected + positional token features ``[N, L, H]`` (the attention block's input)."""
        x = self.proj(states)
        pos = torch.arange(x.shape[1], device=x.device)
        return self.pos_drop(self.pos_norm(x + self.pos(pos)))

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask if self.masked_pool else None)

    def encode(self, states: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Self branch: returns (pooled ``[N, H]``, pre-attention tokens ``[N, L, H]``)."""
        x = self.tokens(states)
        return self.pool(self.attn(x, mask), mask), x

    def teacher(self, x_src: torch.Tensor, m_src: torch.Tensor, x_tgt: torch.Tensor, m_tgt: torch.Tensor) -> torch.Tensor:
        """Cross branch: pool(concat_len[CrossAttn(q=src, kv=tgt), tgt]) → ``[N, H]``."""
        c = self.attn(x_src, m_src, x_tgt, m_tgt)
        return self.pool(torch.cat([c, x_tgt], 1), torch.cat([m_src, m_tgt], 1))


class LatentMapping(nn.Module):
    """Common-space mapping: Linear (Xavier-uniform, zero bias) → BatchNorm1d → Dropout → L2-normalise."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.2, batch_norm: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.bn = nn.BatchNorm1d(out_dim) if batch_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_dim]`` → L2-normalised ``[N, out_dim]``."""
        return F.normalize(self.drop(self.bn(self.linear(x))), dim=-1)

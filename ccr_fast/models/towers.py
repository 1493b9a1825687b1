"""Hugging Face towers found locally: a folder, or a hub id resolved in the local Hugging Face cache.

Nothing is downloaded: a hub id (``org/name``) is looked up under the cache folder named by ``HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` — read at call time — in the cache's own layout
(``models--org--name/snapshots/<commit>/``, the commit named by ``refs/main``). A model that is not there is a
one-line ``FileNotFoundError`` naming the id and the folder searched.

Vision towers (:class:`VisionTower`): CLIP and SigLIP vision towers (a full CLIP/SigLIP folder gives its vision
half), ViT, Swin and ConvNeXt, loaded with the model type's own classes (``AutoModel`` for the rest) and an
``AutoImageProcessor``. ``tokens="pooled"`` gives ``[N, D]``: CLIP's projected image embedding (the plain
``pooler_output`` for a vision-only CLIP folder), SigLIP's attention-pooled output, ViT's final [CLS] state, Swin's
and ConvNeXt's pooled output. ``tokens="patches"`` gives the final token grid ``[N, T, D]`` ([CLS] included where the
model has one; ConvNeXt's ``[N, C, H, W]`` map flattened to ``[N, H·W, C]``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ["hf_cache_dir", "resolve_hf_model", "VisionTower", "load_vision_tower", "load_image_processor",
           "VISION_TYPES", "trainable_start", "TowerBottom", "TowerTop"]

VISION_TYPES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model", "vit", "swin", "convnext")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now (``HF_HUB_CACHE`` > ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    return Path(os.path.expanduser("~/.cache/huggingface/hub"))


def resolve_hf_model(name: Union[str, os.PathLike], what: str = "visual_encoder", revision: str = "main") -> Path:
    """A local folder holding ``config.json`` for ``name`` (a folder, or a hub id found in the local cache).

    Raises:
        FileNotFoundError: one line naming ``what``, the id and the cache folder searched.
    """
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise TypeError(f"{what}: expected a folder or a Hugging Face hub id, got {name!r}")
    p = Path(os.path.expanduser(str(name)))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{what}: folder {str(p)!r} has no config.json (not a Hugging Face model folder)")
        return p
    text = str(name)
    if not _HUB_ID.match(text):
        raise FileNotFoundError(f"{what}: {text!r} is neither a folder nor a Hugging Face hub id")
    cache = hf_cache_dir()
    repo = cache / ("models--" + text.replace("/", "--"))
    snaps = repo / "snapshots"
    snap = None
    ref = repo / "refs" / revision
    if ref.is_file():
        snap = snaps / ref.read_text().strip()
    elif (snaps / revision).is_dir():  # a commit hash given as the revision
        snap = snaps / revision
    elif snaps.is_dir():
        found = sorted(d for d in snaps.iterdir() if (d / "config.json").is_file())
        snap = found[-1] if len(found) == 1 else None
    if snap is None or not (snap / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {text!r} is not a local folder and is not in the local Hugging Face cache "
                                f"(searched {repo}; set HF_HUB_CACHE or HF_HOME, or put the model there first — "
                                f"nothing is downloaded at run time)")
    return snap


def _model_type(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError) as e:
        raise ValueError(f"visual_encoder: cannot read {path / 'config.json'}: {e}") from None


def load_image_processor(path: Union[str, os.PathLike]):
    """The folder's ``AutoImageProcessor`` (the Pillow-backed one where torchvision is missing)."""
    import warnings

    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    path = resolve_hf_model(path)
    if not (path / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"visual_encoder: {path} has no preprocessor_config.json (the image processor)")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "torchvision not installed, using the PIL processor" notice
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    finally:
        hf_logging.set_verbosity(level)


def _block_prefixes(kind: str, model: nn.Module) -> List[str]:
    """Parameter-name prefixes of the tower's blocks, bottom to top (what ``trainable_layers`` indexes)."""
    names = [n for n, _ in model.named_modules()]
    if kind in ("clip", "clip_vision_model", "siglip", "siglip_vision_model"):
        pat = re.compile(r"^(.*encoder\.layers\.\d+)$")
    elif kind == "vit":
        pat = re.compile(r"^((?:.*\.)?layers?\.\d+)$")
    elif kind == "swin":
        pat = re.compile(r"^(.*encoder\.layers\.\d+\.blocks\.\d+)$")
    elif kind == "convnext":
        pat = re.compile(r"^(.*encoder\.stages\.\d+\.layers\.\d+)$")
    else:
        pat = re.compile(r"^(.*(?:layers?|blocks)\.\d+)$")
    return [n for n in names if pat.match(n)]


class VisionTower(nn.Module):
    """A HF vision model → pooled ``[N, D]`` or patch tokens ``[N, T, D]`` from ``pixel_values [N, 3, H, W]``.

    Args:
        model: the transformers vision model. kind: its ``model_type``. tokens: ``"pooled"`` or ``"patches"``.
    """

    def __init__(self, model: nn.Module, kind: str, tokens: str = "pooled", source: str = ""):
        super().__init__()
        if tokens not in ("pooled", "patches"):
            raise ValueError(f"model.visual_tokens: expected 'pooled' or 'patches', got {tokens!r}")
        self.model, self.kind, self.tokens, self.source = model, kind, tokens, source

    @property
    def out_dim(self) -> int:
        c = self.model.config
        if self.kind == "clip" and self.tokens == "pooled":
            return int(c.projection_dim)
        if self.kind in ("swin",):
            return int(self.model.num_features)
        if self.kind == "convnext":
            return int(c.hidden_sizes[-1])
        return int(c.hidden_size)

    def blocks(self) -> List[str]:
        """Names of the tower's blocks, bottom to top (``model.visual_trainable_layers`` indexes this list)."""
        return _block_prefixes(self.kind, self.model)

    def set_trainable(self, layers: Optional[Sequence[int]]) -> List[str]:
        """Train the listed blocks (ints, negative from the top), plus the final norm / pooler / projection when
        the top block trains; ``None`` trains everything, ``[]`` freezes the tower. Returns the trainable names."""
        blocks = self.blocks()
        if layers is None:
            for p in self.model.parameters():
                p.requires_grad_(True)
            return [n for n, _ in self.model.named_parameters()]
        keep = set()
        for x in layers:
            if isinstance(x, bool) or not isinstance(x, int) or not -len(blocks) <= x < len(blocks):
                raise ValueError(f"model.visual_trainable_layers: expected block indices in "
                                 f"[-{len(blocks)}, {len(blocks)}) for this {self.kind} tower, got {x!r}")
            keep.add(x % len(blocks))
        chosen = tuple(blocks[i] + "." for i in sorted(keep))
        every = tuple(b + "." for b in blocks)
        head = bool(blocks) and (len(blocks) - 1) in keep  # the top block trains: so do the layers after it
        out = []
        for n, p in self.model.named_parameters():
            after = not n.startswith(every) and not any(t in n for t in ("encoder.", "embeddings", "pre_layrnorm"))
            on = n.startswith(chosen) or (head and after)
            p.requires_grad_(on)
            if on:
                out.append(n)
        return out

    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.parameters())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.tokens == "patches":
            h = out.last_hidden_state
            if h.dim() == 4:  # ConvNeXt: [N, C, H, W] -> [N, H*W, C]
                h = h.flatten(2).transpose(1, 2)
            return h
        if self.kind == "clip":
            return out.image_embeds
        if self.kind == "vit":
            return out.last_hidden_state[:, 0]
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            h = out.last_hidden_state
            return h.flatten(2).mean(-1) if h.dim() == 4 else h.mean(1)
        return pooled.flatten(1) if pooled.dim() > 2 else pooled


def load_vision_tower(name: Union[str, os.PathLike], tokens: str = "pooled",
                      trainable_layers: Optional[Sequence[int]] = ()) -> VisionTower:
    """A :class:`VisionTower` (fp32, eval mode) from a folder or a cached hub id; ``trainable_layers`` as
    :meth:`VisionTower.set_trainable` (default: frozen)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # a full CLIP/SigLIP folder's text half is reported as unused keys
    hf_logging.disable_progress_bar()  # no "Loading weights" bar per tower
    try:
        tower = _load_tower(name, tokens)
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    tower.set_trainable(None if trainable_layers is None else list(trainable_layers))
    return tower


def _load_tower(name, tokens: str) -> VisionTower:
    import transformers as T

    path = resolve_hf_model(name)
    kind = _model_type(path)
    kw = dict(local_files_only=True, dtype=torch.float32)
    if kind == "clip":  # a full CLIP folder: its vision half and the image projection
        full = T.CLIPConfig.from_pretrained(str(path), local_files_only=True)
        vcfg = full.vision_config
        vcfg.projection_dim = full.projection_dim
        model = T.CLIPVisionModelWithProjection.from_pretrained(str(path), config=vcfg, **kw)
    elif kind == "clip_vision_model":
        model = T.CLIPVisionModel.from_pretrained(str(path), **kw)
    elif kind in ("siglip", "siglip_vision_model"):
        model = T.SiglipVisionModel.from_pretrained(str(path), **kw)
    elif kind in ("vit", "swin", "convnext"):
        model = T.AutoModel.from_pretrained(str(path), **kw)
    else:
        raise ValueError(f"visual_encoder: {str(name)!r} is a {kind or 'unknown'!r} model; supported vision towers: "
                         f"{', '.join(VISION_TYPES)}")
    return VisionTower(model.eval(), "siglip" if kind == "siglip_vision_model" else kind, tokens, source=str(path))


# ------------------------------------------------------------------------------------ a tower split for training
_FLAT = ("clip", "clip_vision_model", "siglip", "vit")  # towers with one flat list of blocks


def _core(tower: VisionTower) -> nn.Module:
    """The transformer inside a flat tower: the module holding ``embeddings`` and ``encoder``."""
    for m in tower.model.modules():
        if hasattr(m, "embeddings") and (hasattr(m, "encoder") or hasattr(m, "layers")):
            return m
    raise ValueError(f"visual_encoder: cannot find the embeddings/encoder of this {tower.kind} tower")


def _layers(core: nn.Module):
    enc = getattr(core, "encoder", core)
    return enc.layers if hasattr(enc, "layers") else enc.layer


def _run(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    out = layer(h, None)
    return out[0] if isinstance(out, tuple) else out


def trainable_start(tower: VisionTower, layers) -> Optional[int]:
    """Where training starts for ``model.visual_trainable_layers``: ``None`` (null: the whole tower, from the
    pixels) or ``k`` (the listed blocks are ``k .. top``, ints, negative from the top). Anything else: ValueError."""
    if layers is None:
        return None
    blocks = tower.blocks()
    name = "model.visual_trainable_layers"
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"{name}: expected null (the whole tower) or a non-empty list of block indices, "
                         f"got {layers!r}")
    keep = set()
    for x in layers:
        if isinstance(x, bool) or not isinstance(x, int) or not -len(blocks) <= x < len(blocks):
            raise ValueError(f"{name}: expected block indices in [-{len(blocks)}, {len(blocks)}) for this "
                             f"{tower.kind} tower, got {x!r}")
        keep.add(x % len(blocks))
    k = min(keep)
    if keep != set(range(k, len(blocks))):
        raise ValueError(f"{name}: the trainable blocks must be the top ones (k .. {len(blocks) - 1}, the frozen "
                         f"bottom is computed once per image), got {list(layers)!r}")
    if tower.kind not in _FLAT:
        raise ValueError(f"{name}: a {tower.kind} tower trains whole (null) or frozen ([]); block lists are "
                         f"supported for {', '.join(_FLAT)}")
    if tower.tokens != "pooled":
        raise ValueError(f"{name}: a trainable tower needs model.visual_tokens='pooled', got {tower.tokens!r}")
    return k


class TowerBottom(nn.Module):
    """The frozen part of a tower below block ``start``: ``pixel_values [N, C, H, W]`` → flat states
    ``[N, T·D]`` (``start=None``: the pixels themselves, flattened ``[N, C·H·W]``)."""

    def __init__(self, tower: VisionTower, start: Optional[int]):
        super().__init__()
        self.tower, self.start = tower, start

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            return pixel_values.flatten(1)
        core = _core(self.tower)
        h = core.embeddings(pixel_values)
        if hasattr(core, "pre_layrnorm"):
            h = core.pre_layrnorm(h)
        for layer in _layers(core)[: self.start]:
            h = _run(layer, h)
        return h.flatten(1)


class TowerTop(nn.Module):
    """The trainable part of a tower: :class:`TowerBottom`'s flat output ``[B, F]`` → the tower's pooled output
    ``[B, D]`` (blocks ``start ..`` top, then the tower's final norm / pooling / projection)."""

    def __init__(self, tower: VisionTower, start: Optional[int]):
        super().__init__()
        self.tower, self.start = tower, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.start is None:
            c = int(self.tower.model.config.num_channels)
            side = int(round((x.shape[1] // c) ** 0.5))
            return self.tower(x.view(n, c, side, side))
        core = _core(self.tower)
        h = x.view(n, -1, int(self.tower.model.config.hidden_size))
        for layer in _layers(core)[self.start:]:
            h = _run(layer, h)
        kind = self.tower.kind
        if kind in ("clip", "clip_vision_model"):
            pooled = core.post_layernorm(h[:, 0])
            proj = getattr(self.tower.model, "visual_projection", None)
            return proj(pooled) if kind == "clip" and proj is not None else pooled
        if kind == "siglip":
            h = core.post_layernorm(h)
            return core.head(h) if getattr(core, "use_head", False) and hasattr(core, "head") else h.mean(1)
        return core.layernorm(h)[:, 0]  # vit: the final [CLS] state

"""Training configuration: dataclasses, YAML/JSON loading, dotted overrides, key validation.

A config is a :class:`Config` with the top-level keys of the api contract (``method``, ``data``, ``languages``,
``text_encoder``, ``epochs``, ``max_steps``, ``batch_size``, ``lr``, ``seed``, ``device``, ``output_dir``,
``resume``) plus nested sections: ``model`` (sizes shared by all methods), ``optim`` (optimiser, schedule,
clipping, AMP, accumulation), ``eval`` (validation/selection) and one section per method (``baseline``,
``nrccr``, ``cl2cm``, ``ccrk``) and ``files`` (the release file names of an on-disk collection, see
:class:`FilesConfig`). Unknown keys anywhere, and values of the wrong type (``optim.lr="abc"``), raise
:class:`ConfigError` (a ``ValueError``) naming the key.

The paper configs ship inside the package (``ccr_fast/configs/*.yaml``) and load by name from anywhere;
:func:`config_names` lists them, :func:`config_path` gives a name's file.

Example::

    cfg = load_config("nrccr_multi30k_de", **{"optim.lr": 1e-4, "epochs": 3})  # or a path to a YAML/JSON file
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

METHODS = ("baseline", "linear", "nrccr", "cl2cm", "ccrk")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the shipped configs (package data)


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the key (``optim.lr``) or the file."""


@dataclass
class ModelConfig:
    """Sizes and freezing shared by the methods.

    ``trainable_layers``: encoder layer indices (ints) or names (``"layer.10"``) that stay trainable; every other
    encoder layer, the embeddings and the pooler are frozen. ``None`` trains everything, ``[]`` freezes the encoder.
    ``train_top_layers``: n > 0 also trains the top n encoder layers (on top of ``trainable_layers``; with
    ``cache_text_states`` the input states of the lowest trained layer are cached, so a step runs only the trained
    layers).
    ``cache_text_states``: cache each caption's token states when the encoder is frozen, or the input states of the
    trained top block when only top layers train (fast CPU training).
    ``tiny_text_encoder``: build a random-init BERT of this hidden size (tests; no weights read) instead of loading.
    ``visual_dim``: the visual feature width; None (the default) reads it from the data, a set value must match.
    ``visual_trainable_layers`` / ``visual_tokens``: for a top-level ``visual_encoder`` (a Hugging Face vision tower
    over raw images): the tower blocks that train (``[]``: frozen, its outputs computed once per image; top block
    indices, e.g. ``[-1]``, for CLIP / SigLIP / ViT; ``None``: the whole tower, any kind) and its
    output (``"pooled"`` or ``"patches"``, the token grid that fusion encoders and frame attention take).
    """

    visual_dim: Optional[int] = None  # None = the data's feature width; a different value is an error
    visual_encoder: str = "mlp"  # "mlp" | "linear" | "norm_linear" | "transformer" (frames)
    visual_hidden: int = 1024  # width of the visual encoder's output
    text_hidden: int = 384  # width of the NRCCR/baseline text head
    embed_dim: int = 512  # width of the common retrieval space
    heads: int = 8  # attention heads of the text head / frame transformer
    qk_dim: int = 512  # query/key width of those attention blocks
    dropout: float = 0.1  # dropout in heads and attention (norm_linear: on the features)
    map_dropout: float = 0.2  # dropout of the mapping into the common space
    trainable_layers: Optional[List[Any]] = None  # encoder layers that train (ints or names); None = all, [] = frozen
    train_top_layers: int = 0  # also train the top n encoder layers (added to trainable_layers; 0 = none)
    cache_text_states: bool = False  # cache the frozen encoder's token states per caption (fast CPU training)
    max_tokens: int = 40  # captions are cut to this many tokens
    text_prefix: str = ""  # prepended to every caption (e5 wants "query: ")
    tiny_text_encoder: int = 0  # > 0: a random-init BERT of this width instead of text_encoder (tests)
    tiny_text_layers: int = 2  # layers of that tiny BERT
    visual_trainable_layers: Optional[List[Any]] = field(default_factory=list)  # tower blocks that train ([]: frozen)
    visual_tokens: str = "pooled"  # tower output: "pooled" [N, D] | "patches" [N, T, D]


@dataclass
class OptimConfig:
    """Optimiser and schedule. ``schedule``: "constant" | "linear" | "cosine" (all with ``warmup`` as a fraction of
    the steps) | "plateau" (NRCCR: ×``decay`` each epoch, ×0.5 after a non-improving epoch when more than 2
    epochs passed since the last halving)."""

    optimizer: str = "adamw"  # "adamw" | "adam"
    lr: Optional[float] = None  # overrides the top-level ``lr`` when set
    weight_decay: float = 0.01  # decoupled (adamw) or L2 (adam) weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    schedule: str = "cosine"  # "constant" | "linear" | "cosine" | "plateau" (NRCCR rule)
    warmup: float = 0.1  # linear warm-up as a fraction of the steps
    decay: float = 0.99  # plateau: lr factor per epoch
    grad_clip: float = 2.0  # clip the gradient L2 norm to this (0 = off)
    grad_accum: int = 1  # optimiser step every n batches
    amp: bool = True  # only used on CUDA
    head_lr_mult: float = 1.0  # lr of everything but the text encoder = lr * head_lr_mult (the encoder gets lr)


@dataclass
class EvalConfig:
    """Validation and model selection. ``metric``: a key of ``retrieval_metrics`` (``sumr``, ``mr``, ``t2v_sumr``)
    averaged over the validation languages; ``patience``: early stopping after that many non-improving epochs
    (0 = off)."""

    metric: str = "sumr"  # selection score: "sumr" | "mr" | "t2v_sumr", mean over languages
    patience: int = 10  # stop after this many non-improving epochs (0 = never)
    batch_size: int = 128  # encoding batch size for evaluation
    val_split: str = "val"  # split used for validation/model selection
    test_split: str = "test"  # split reported as test
    every_epoch: bool = True  # validate after every epoch (else only at the end)


@dataclass
class BaselineConfig:
    """Dual encoder trained on (V,S) and (V,T): ``loss`` "triplet" (VSE++) or "infonce"."""

    loss: str = "infonce"  # "infonce" (CLIP loss) | "triplet" (VSE++)
    margin: float = 0.2  # triplet margin
    max_violation: bool = True  # triplet: hardest negative only (else sum over negatives)
    temperature: float = 0.05  # infonce temperature
    w_src: float = 1.0  # weight of the (V, S) loss
    w_tgt: float = 1.0  # weight of the (V, T*) loss
    masked_pool: bool = True  # mean over real tokens (False = over the padded length)


@dataclass
class LinearConfig:
    """Closed-form ridge map into the frozen text space (``method="linear"``, :mod:`ccr_fast.methods.linear`).
    ``lambdas``: ridge strengths relative to the mean eigenvalue of XᵀX, the best on validation is kept;
    ``center_text``: subtract the training captions' mean text embedding (both sides of the cosine).
    ``querybank``: rank with query-bank normalisation over the training captions and images, with the
    ``querybank_betas`` value that is best on validation (jointly with λ)."""

    # ridge strengths tried (x mean eigenvalue); best on validation
    lambdas: List[float] = field(default_factory=lambda: [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
    center_text: bool = True  # subtract the mean training caption embedding
    querybank: bool = False  # rank with query-bank normalisation (ccr_fast.eval.querybank); β picked on validation
    # query-bank inverse temperatures tried with querybank
    querybank_betas: List[float] = field(default_factory=lambda: [5.0, 10.0, 20.0, 30.0])


@dataclass
class NRCCRConfig:
    """NRCCR loss weights and quirks (docs/methods.md, "nrccr"). Setting a weight to 0 ablates that loss."""

    w_tri_src: float = 1.0  # weight of triplet(source, visual)
    w_tri_tgt: float = 0.6  # weight of triplet(MT target, visual)
    w_dtl: float = 0.4  # weight of the similarity distillation from the teacher
    w_feat: float = 0.1  # weight of SmoothL1(target, teacher)
    w_cyc: float = 0.5  # weight of triplet(source, back-translation)
    w_adv: float = 0.001  # weight of the adversarial language loss
    margin: float = 0.2  # triplet margin
    max_violation: bool = True  # triplet: hardest negative only
    dtl_temperature: float = 0.07  # temperature of the distillation softmaxes
    smooth_l1_beta: float = 4.0  # SmoothL1 beta of the feature distillation
    disc_type: str = "not-so-weak"  # language discriminator: "weak" | "not-so-weak" | "strong"
    disc_lr: float = 1e-3  # the discriminator's Adam lr
    masked_pool: bool = False  # False = official unmasked mean over the padded length
    fusion_weight: float = 0.2  # weight of the MT-to-English query at inference (translate-test), test
    fusion_weight_val: Optional[float] = None  # the same weight for validation (None = fusion_weight)


@dataclass
class CL2CMConfig:
    """CL2CM reconstruction weights (docs/methods.md, "cl2cm"; every choice is [UNVERIFIED] and a flag)."""

    temperature: float = 0.05  # InfoNCE temperature (CM and sentence losses)
    cm_src: bool = True  # also InfoNCE(v, s) in the CM network
    w_sent: float = 1.0  # weight of the sentence-level InfoNCE(s, t*)
    w_word: float = 0.1  # weight of the word-level optimal-transport loss
    w_kt: float = 1.0  # weight of the relational distillation CL -> CM
    kt_teacher_temperature: float = 0.05  # temperature of the teacher relations sim(s, t*)
    kt_student_temperature: float = 0.05  # temperature of the student relations sim(v, t*)
    kt_rows: bool = True  # distil the row distributions
    kt_cols: bool = True  # distil the column distributions
    ot_eps: float = 0.05  # Sinkhorn entropic regularisation
    ot_iters: int = 50  # Sinkhorn iterations
    ot_mode: str = "distance"  # "distance" (<Π,C>) | "target" (Π as soft target of token similarities)
    share_text_encoder: bool = True  # CL and CM share the text encoder (else a copy)
    masked_pool: bool = True  # mean over real tokens (False = over the padded length)


@dataclass
class CCRkConfig:
    """CCR^k (docs/methods.md, "ccrk"). ``mode``: "pretrain" (1-to-K ITC + MITM + CMLM) or "finetune" (id-aware
    ITC + ITM). ``one_to_one``: the ``cclm_easy`` ablation (1-to-1 ITC on one random language per image).
    ``text_proj``, ``vision_proj``, ``caption_groups`` and ``id_aware`` choose the built-in default's variant
    (docs/results.md)."""

    mode: str = "pretrain"  # "pretrain" (ITC + MITM + CMLM) | "finetune" (id-aware ITC + ITM)
    temp_init: float = 0.07  # initial learnable temperature
    temp_min: float = 0.001  # pretrain: lower clamp of the temperature
    temp_max: float = 0.5  # pretrain: upper clamp of the temperature
    t2i_divisor: str = "K"  # "K" (released code: extra 1/K on text->image) | "1"
    w_itc: float = 1.0  # weight of the (1-to-K) contrastive loss
    w_itm: float = 1.0  # weight of the matching (ITM/MITM) loss
    w_mlm: float = 1.0  # weight of the cross-modal MLM loss
    positive_sampling: int = 1  # 0 uniform, 1 favour low-similarity languages (released default), 2 on logits
    fusion_layers: int = 2  # layers of the fusion encoder (ITM/MLM)
    fusion_width: int = 256  # width of the fusion encoder
    mask_prob: float = 0.4  # CMLM: fraction of tokens masked
    max_masks: int = 12  # CMLM: at most this many masked tokens
    span_prob: float = 0.2  # CMLM: probability of span masking
    k_test: int = 16  # ITM re-rank of the top k ITC candidates (0 = ITC only)
    one_to_one: bool = False  # 1-to-1 ITC on one random language (the CCLM-style ablation)
    pool: str = "cls"  # "cls" | "mean"
    text_proj: str = "linear"  # "linear" | "identity" (the encoder's pooled space itself; embed_dim = its width)
    vision_proj: str = "linear"  # "linear" | "identity" (the visual encoder's output is the embedding)
    caption_groups: str = "min"  # "min" | "max": every caption of each item, fewer ones repeated (CCRkDataset)
    id_aware: bool = False  # ITC positives: every text of the same visual item in the batch (duplicates too)
    text_center: bool = False  # subtract a running mean of the normalised pooled caption embeddings, renormalise
    querybank: bool = False  # ITC ranking with query-bank normalisation over the training captions/images
    querybank_beta: float = 20.0  # inverse temperature of that normalisation
    # non-empty: the query-bank β is picked on validation (each epoch, jointly with ridge_mix) from these values
    querybank_betas: List[float] = field(default_factory=list)
    # non-empty: rank with v = (1-w)·v_learned + w·v_ridge (a closed-form ridge map), w and λ picked on validation
    ridge_mix: List[float] = field(default_factory=list)
    ridge_mix_lambdas: List[float] = field(default_factory=lambda: [3.0, 10.0])  # λ (× mean eigenvalue) tried
    ridge_init: float = 0.0  # > 0: start the visual map from the closed-form ridge solution with this λ (0 = off)
    itc_loss: str = "softmax"  # "softmax" (1-to-K InfoNCE, temperature) | "sigmoid" (SigLIP: learnable scale + bias)
    sigmoid_scale_init: float = 10.0  # itc_loss "sigmoid": initial scale exp(t'), t' learnable (SigLIP: log 10)
    sigmoid_bias_init: float = -10.0  # itc_loss "sigmoid": initial learnable bias (SigLIP: -10)


@dataclass
class FilesConfig:
    """File names of an on-disk collection in a paper release layout (used when ``data`` is a folder).

    Names may use ``{coll}`` (the collection name, default: the folder name), ``{src}`` / ``{tgt}`` (the first and
    the second language of ``languages``), ``{lang}`` (each evaluated language), ``{feat}`` (``feature``) and
    ``{split}``. Defaults are the NRCCR Multi30K Task 1 release (docs/training.md, "Data").

    ``layout``: "auto" (NRCCR when ``TextData/`` exists, else jsonl), "nrccr" or "jsonl".
    NRCCR: ``train_captions`` (source, MT, back-translation files under ``TextData/``, ``.caption.txt`` implied),
    ``val_captions`` / ``test_captions`` (per evaluated language: human captions and, optional, their MT into the
    source), ``feature`` (a folder under ``FeatureData/``: BigFile, or ``.npy`` files named by
    ``feature_files[split]``), ``id_files[split]`` (row order of the ``.npy`` files, under ``FeatureData/``).
    jsonl (IGLUE / CCR^k): ``jsonl_captions[split]`` per language, ``features`` an ``.npy`` (with ``.ids.txt``) or a
    BigFile folder; ``jsonl_mt[split]`` (optional) the MT of each language's file into the source language.
    ``mt_stand_in``: where the MT (or back-translation) file of the training split is missing, use the human
    target caption (or the source caption) of the same item instead — caption ``j mod n`` of its ``n`` target
    captions for source caption ``j`` — off by default, so a missing file is an error naming it.
    """

    layout: str = "auto"  # "auto" | "nrccr" | "jsonl" (collection folders)
    coll: Optional[str] = None  # collection name in file names (None = the folder name)
    # nrccr: source, MT and back-translation caption files
    train_captions: List[str] = field(default_factory=lambda: [
        "{coll}train_{src}c", "{coll}train_google_{src}c2{tgt}", "{coll}train_google_{src}c2{tgt}2{src}c"])
    # nrccr: per language, human captions and their MT
    val_captions: List[str] = field(default_factory=lambda: ["{coll}val_{lang}_task1", "{coll}val_google_{lang}2{src}c"])
    # nrccr: per language, human captions and their MT
    test_captions: List[str] = field(default_factory=lambda: [
        "{coll}test_{lang}_2016_task1", "{coll}test_google_{lang}2{src}c_2016"])
    feature: str = "resnet_152"  # feature folder under FeatureData/
    feature_files: Dict[str, str] = field(default_factory=lambda: {
        "train": "train-{feat}-avgpool.npy", "val": "val-{feat}-avgpool.npy",
        "test": "test_2016_flickr-{feat}-avgpool.npy"})  # nrccr: .npy feature file per split
    id_files: Dict[str, str] = field(default_factory=lambda: {
        "train": "train_id.txt", "val": "val_id.txt", "test": "test_id_2016.txt"})  # nrccr: row-order id file per split
    # jsonl: caption file per split and language
    jsonl_captions: Dict[str, str] = field(default_factory=lambda: {
        "train": "train.{lang}.jsonl", "val": "val.{lang}.jsonl", "test": "test.{lang}.jsonl"})
    jsonl_mt: Dict[str, str] = field(default_factory=dict)  # jsonl: MT-into-source file per split (optional)
    features: str = "features.npy"  # jsonl: .npy (+ .ids.txt) or BigFile folder
    max_frames: Optional[int] = None  # keep at most this many frames per video (None = all)
    mt_stand_in: bool = False  # missing MT / back-translation: use human captions instead
    image_root: Optional[str] = None  # JSONL img_path / CSV image paths are under it
    image_folder: str = "ImageData"  # NRCCR layout: images / frame folders here
    skip_bad_media: bool = False  # bad image/frame: skip + report, not an error
    frames_per_video: Optional[int] = None  # frames sampled uniformly (None = all)
    video_frames: str = "mean"  # "mean" over frames | "keep" [N, F, D]
    media_batch_size: int = 32  # images per vision-tower batch


@dataclass
class Config:
    """The whole training configuration (``ccr-fast train --help`` lists every key, its default and meaning)."""

    method: str = "ccrk"  # "baseline" | "linear" | "nrccr" | "cl2cm" | "ccrk"
    data: Any = "multi30k"  # "shipped", "synthetic", a collection folder or a mapping
    # source first, then the targets / the K languages
    languages: List[str] = field(default_factory=lambda: ["en", "de", "fr", "cs"])
    text_encoder: Optional[str] = None  # None = shipped e5; a HF folder or cached hub id
    visual_encoder: Optional[str] = None  # None = features; HF folder or cached hub id
    epochs: int = 10  # training epochs
    max_steps: Optional[int] = None  # stop after this many optimiser steps (None = epochs)
    batch_size: int = 64  # training batch size (items, or images for ccrk)
    lr: float = 1e-4  # learning rate
    seed: int = 0  # random seed (data order, init, sampling)
    device: str = "auto"  # "auto" | "cpu" | "cuda[:i]"
    output_dir: str = "runs"  # run folders are created under this folder
    resume: Optional[str] = None  # run/checkpoint folder to resume, or "auto"
    save_every_steps: int = 0  # also checkpoint ("last") every N optimiser steps; 0 = only at epoch ends
    save_encoder: bool = False  # checkpoints also hold the frozen text encoder (self-contained), else its path+hash
    num_workers: int = 0  # DataLoader worker processes
    log_every: int = 10  # log the losses every n steps
    progress: bool = True  # show a progress bar and print the test metrics
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    nrccr: NRCCRConfig = field(default_factory=NRCCRConfig)
    cl2cm: CL2CMConfig = field(default_factory=CL2CMConfig)
    ccrk: CCRkConfig = field(default_factory=CCRkConfig)
    files: FilesConfig = field(default_factory=FilesConfig)

    def method_cfg(self):
        """The section of the configured method (None for a method without one)."""
        return getattr(self, self.method, None)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _valid_keys(obj) -> List[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _coerce(value, hint, key: str):
    """``value`` as the annotated type ``hint`` (str → number/bool from YAML-style text); ConfigError otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key)
        return value
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args and args[0] is not Any \
            else value
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _set(obj, key: str, value, where: str) -> None:
    """Set ``obj.key`` (recursing into sections for dicts); unknown keys and wrong types raise ConfigError."""
    valid = _valid_keys(obj)
    if key not in valid:
        raise ConfigError(f"unknown config key {where + key!r}; valid keys here: {', '.join(valid)}")
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"config section {where + key!r} must be a mapping, got {type(value).__name__}")
        for k, v in value.items():
            _set(current, k, v, where + key + ".")
        return
    hint = typing.get_type_hints(type(obj)).get(key, Any)
    setattr(obj, key, _coerce(value, hint, where + key))


def apply_overrides(cfg: Config, overrides: Dict[str, Any]) -> Config:
    """Apply ``{"optim.lr": 1e-4, "epochs": 2, "nrccr": {...}}`` in place (dotted names go into sections)."""
    for key, value in overrides.items():
        parts = key.split(".")
        obj = cfg
        for i, p in enumerate(parts[:-1]):
            valid = _valid_keys(obj)
            if p not in valid or not dataclasses.is_dataclass(getattr(obj, p)):
                raise ConfigError(f"unknown config section {'.'.join(parts[:i + 1])!r}; valid keys here: "
                                  f"{', '.join(valid)}")
            obj = getattr(obj, p)
        _set(obj, parts[-1], value, ".".join(parts[:-1]) + ("." if len(parts) > 1 else ""))
    return cfg


def validate(cfg: Config) -> Config:
    """Check values that have a closed set of choices."""
    if cfg.method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {cfg.device!r}")
    if cfg.optim.schedule not in ("constant", "linear", "cosine", "plateau"):
        raise ConfigError(f"optim.schedule must be constant|linear|cosine|plateau, got {cfg.optim.schedule!r}")
    if cfg.optim.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"optim.optimizer must be 'adam' or 'adamw', got {cfg.optim.optimizer!r}")
    for name in ("epochs", "batch_size"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.model.visual_tokens not in ("pooled", "patches"):
        raise ConfigError(f"model.visual_tokens must be 'pooled' or 'patches', got {cfg.model.visual_tokens!r}")
    if cfg.files.video_frames not in ("mean", "keep"):
        raise ConfigError(f"files.video_frames must be 'mean' or 'keep', got {cfg.files.video_frames!r}")
    if cfg.files.frames_per_video is not None and int(cfg.files.frames_per_video) < 1:
        raise ConfigError(f"files.frames_per_video must be >= 1 or None, got {cfg.files.frames_per_video}")
    if cfg.files.layout not in ("auto", "nrccr", "jsonl"):
        raise ConfigError(f"files.layout must be auto|nrccr|jsonl, got {cfg.files.layout!r}")
    if cfg.save_every_steps < 0:
        raise ConfigError(f"save_every_steps must be >= 0, got {cfg.save_every_steps}")
    if cfg.max_steps is not None and int(cfg.max_steps) < 1:
        raise ConfigError(f"max_steps must be >= 1 or None, got {cfg.max_steps}")
    if cfg.optim.grad_accum < 1:
        raise ConfigError(f"optim.grad_accum must be >= 1, got {cfg.optim.grad_accum}")
    if cfg.optim.lr is not None:
        cfg.lr = float(cfg.optim.lr)
    if isinstance(cfg.languages, str):
        cfg.languages = [s for s in cfg.languages.replace(",", " ").split() if s]
    return cfg


def read_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(f"config file {path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def config_names() -> List[str]:
    """Names of the configs shipped in the package (``"nrccr_multi30k_de"``, ...), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str) -> Path:
    """The file of the shipped config ``name`` (a ``.yaml`` suffix is allowed); ConfigError listing the names."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = CONFIG_DIR / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not path.is_file():
        raise ConfigError(f"unknown config {name!r}: not a file and not a shipped config name; available names: "
                          f"{', '.join(config_names())}")
    return path


def config_file(config: Union[str, Path]) -> Path:
    """``config`` as a file: an existing path as given, else a shipped config name (:func:`config_path`).

    A path that does not exist and is not a bare name (it has a folder part) raises ConfigError naming it."""
    path = Path(config)
    if path.is_file():
        return path
    if isinstance(config, str) and len(path.parts) == 1 and (path.suffix in ("", ".yaml")):
        return config_path(config)
    raise ConfigError(f"config file {str(config)!r} does not exist (shipped config names: "
                      f"{', '.join(config_names())})")


def load_config(config: Union[None, str, Path, Dict[str, Any], Config] = None, **overrides) -> Config:
    """Build a validated :class:`Config` from a shipped config name (``"nrccr_multi30k_de"``), a path, a dict, a
    Config (copied) or None (defaults), then overrides."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = from_dict(config.to_dict())
    elif isinstance(config, (str, Path)):
        try:
            cfg = from_dict(read_file(config_file(config)))
        except ConfigError as e:
            raise ConfigError(f"{config}: {e}" if str(config) not in str(e) else str(e)) from None
    elif isinstance(config, dict):
        cfg = from_dict(config)
    else:
        raise ConfigError(f"config must be None, a path, a dict or a Config, got {type(config).__name__}")
    apply_overrides(cfg, overrides)
    return validate(cfg)


def from_dict(data: Dict[str, Any]) -> Config:
    """A Config from a (possibly nested, possibly dotted-key) dict."""
    cfg = Config()
    apply_overrides(cfg, dict(data))
    return cfg


def parse_value(text: str):
    """Parse a command-line override value (YAML scalar/list syntax: ``1e-4``, ``true``, ``[en,de]``, ``null``)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the config as JSON (YAML readers accept it too)."""
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=False))


# ---------------------------------------------------------------------------------------------- key reference
# The one place every key is documented is its field above: the trailing ``# comment`` (or a comment line right
# above a long field) is its one-line meaning; ``ccr-fast train --help`` is generated from it.
def _field_comments() -> Dict[str, Dict[str, str]]:
    """``{class name: {field: one-line meaning}}`` read from this module's source (shipped with the package)."""
    import ast
    import io
    import tokenize

    src = Path(__file__).read_text(encoding="utf-8")
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.COMMENT}
    lines = src.splitlines()
    out: Dict[str, Dict[str, str]] = {}
    for node in ast.parse(src).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for st in node.body:
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                text = comments.get(st.lineno) or comments.get(st.end_lineno)
                above = st.lineno - 1
                if not text and above in comments and lines[above - 1].strip().startswith("#"):
                    text = comments[above]
                out.setdefault(node.name, {})[st.target.id] = text or ""
    return out


def _show(value) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value or '""'


def config_keys() -> List[Dict[str, str]]:
    """Every configuration key: ``[{"key": "optim.lr", "default": "null", "help": "..."}, ...]`` in the order of
    the dataclasses (top-level keys first, then each section's keys)."""
    notes = _field_comments()
    rows, sections = [], []
    cfg = Config()
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
            continue
        rows.append({"key": f.name, "default": _show(value), "help": notes["Config"].get(f.name, "")})
    for name, section in sections:
        doc = (type(section).__doc__ or "").strip().split("\n")[0]
        rows.append({"key": f"{name}.*", "default": "", "help": doc})
        for f in dataclasses.fields(section):
            rows.append({"key": f"{name}.{f.name}", "default": _show(getattr(section, f.name)),
                         "help": notes[type(section).__name__].get(f.name, "")})
    return rows


def config_help() -> str:
    """The key reference printed by ``ccr-fast train --help``: every key, its default and its meaning; where the
    built-in run (no ``--config``) differs from a default, its value too."""
    builtin = dataclasses.asdict(load_config("default"))
    import textwrap

    lines = ["configuration keys (override with key=value; dotted keys for sections; lists as [a,b]).",
             "Without --config the built-in run (ccr_fast/configs/default.yaml) applies first: its values are shown",
             "as [built-in: ...] where they differ from the default.",
             *textwrap.wrap("Shipped configs (--config NAME): " + ", ".join(config_names()), 110), ""]
    for row in config_keys():
        if row["key"].endswith(".*"):
            lines += ["", f"{row['key'][:-2]}: {row['help']}"]
            continue
        value = builtin
        for part in row["key"].split("."):
            value = value[part]
        extra = "" if _show(value) == row["default"] else f" [built-in: {_show(value)}]"
        lines.append(f"  {row['key']} = {row['default']}{extra}")
        lines.append(f"      {row['help']}")
    return "\n".join(lines)

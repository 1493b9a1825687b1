"""Training configuration: dataclasses, YAML/JSON loading, dotted overrides, key validation.

A config is a :class:`Config` with the top-level keys of the api contract (``method``, ``data``, ``languages``,
``text_encoder``, ``epochs``, ``max_steps``, ``batch_size``, ``lr``, ``seed``, ``device``, ``output_dir``,
``resume``) plus nested sections: ``model`` (sizes shared by all methods), ``optim`` (optimiser, schedule,
clipping, AMP, accumulation), ``eval`` (validation/selection) and one section per method (``baseline``,
``nrccr``, ``cl2cm``, ``ccrk``). Unknown keys anywhere raise ``ValueError`` listing the valid ones.

Example::

    cfg = load_config("configs/nrccr_multi30k_de.yaml", **{"optim.lr": 1e-4, "epochs": 3})
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

METHODS = ("baseline", "nrccr", "cl2cm", "ccrk")


@dataclass
class ModelConfig:
    """Sizes and freezing shared by the methods.

    ``trainable_layers``: encoder layer indices (ints) or names (``"layer.10"``) that stay trainable; every other
    encoder layer, the embeddings and the pooler are frozen. ``None`` trains everything, ``[]`` freezes the encoder.
    ``cache_text_states``: with a fully frozen encoder, cache each caption's token states (fast CPU training).
    ``tiny_text_encoder``: build a random-init BERT of this hidden size (tests; no weights read) instead of loading.
    """

    visual_dim: int = 2048
    visual_encoder: str = "mlp"  # "mlp" | "linear" | "transformer" (frames)
    visual_hidden: int = 1024
    text_hidden: int = 384
    embed_dim: int = 512
    heads: int = 8
    qk_dim: int = 512
    dropout: float = 0.1
    map_dropout: float = 0.2
    trainable_layers: Optional[List[Any]] = None
    cache_text_states: bool = False
    max_tokens: int = 40
    text_prefix: str = ""
    tiny_text_encoder: int = 0
    tiny_text_layers: int = 2


@dataclass
class OptimConfig:
    """Optimiser and schedule. ``schedule``: "constant" | "linear" | "cosine" (all with ``warmup`` as a fraction of
    the steps) | "plateau" (NRCCR: ×``decay`` each epoch, ×0.5 after a non-improving epoch when more than 2
    epochs passed since the last halving)."""

    optimizer: str = "adamw"  # "adamw" | "adam"
    lr: Optional[float] = None  # overrides the top-level ``lr`` when set (api.md's ``optim.lr``)
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"
    warmup: float = 0.1
    decay: float = 0.99
    grad_clip: float = 2.0
    grad_accum: int = 1
    amp: bool = True  # only used on CUDA
    head_lr_mult: float = 1.0


@dataclass
class EvalConfig:
    """Validation and model selection. ``metric``: a key of ``retrieval_metrics`` (``sumr``, ``mr``, ``t2v_sumr``)
    averaged over the validation languages; ``patience``: early stopping after that many non-improving epochs
    (0 = off)."""

    metric: str = "sumr"
    patience: int = 10
    batch_size: int = 128
    val_split: str = "val"
    test_split: str = "test"
    every_epoch: bool = True


@dataclass
class BaselineConfig:
    """Dual encoder trained on (V,S) and (V,T): ``loss`` "triplet" (VSE++) or "infonce"."""

    loss: str = "infonce"
    margin: float = 0.2
    max_violation: bool = True
    temperature: float = 0.05
    w_src: float = 1.0
    w_tgt: float = 1.0
    masked_pool: bool = True


@dataclass
class NRCCRConfig:
    """NRCCR loss weights and quirks (methods.md §1). Setting a weight to 0 ablates that loss."""

    w_tri_src: float = 1.0
    w_tri_tgt: float = 0.6
    w_dtl: float = 0.4
    w_feat: float = 0.1
    w_cyc: float = 0.5
    w_adv: float = 0.001
    margin: float = 0.2
    max_violation: bool = True
    dtl_temperature: float = 0.07
    smooth_l1_beta: float = 4.0
    disc_type: str = "not-so-weak"
    disc_lr: float = 1e-3
    masked_pool: bool = False  # False = official unmasked mean over the padded length
    fusion_weight: float = 0.2  # weight of the MT-to-English query at inference (translate-test)


@dataclass
class CL2CMConfig:
    """CL2CM reconstruction weights (methods.md §2.2; every choice is [UNVERIFIED] and a flag)."""

    temperature: float = 0.05
    cm_src: bool = True  # also InfoNCE(v, s) in the CM network
    w_sent: float = 1.0
    w_word: float = 0.1
    w_kt: float = 1.0
    kt_teacher_temperature: float = 0.05
    kt_student_temperature: float = 0.05
    kt_rows: bool = True
    kt_cols: bool = True
    ot_eps: float = 0.05
    ot_iters: int = 50
    ot_mode: str = "distance"  # "distance" (<Π,C>) | "target" (Π as soft target of token similarities)
    share_text_encoder: bool = True
    masked_pool: bool = True


@dataclass
class CCRkConfig:
    """CCR^k (methods.md §3). ``mode``: "pretrain" (1-to-K ITC + MITM + CMLM) or "finetune" (id-aware ITC + ITM).
    ``one_to_one``: the ``cclm_easy`` ablation (1-to-1 ITC on one random language per image)."""

    mode: str = "pretrain"
    temp_init: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    t2i_divisor: str = "K"
    w_itc: float = 1.0
    w_itm: float = 1.0
    w_mlm: float = 1.0
    positive_sampling: int = 1  # 0 uniform, 1 favour low-similarity languages (released default), 2 on logits
    fusion_layers: int = 2
    fusion_width: int = 256
    mask_prob: float = 0.4
    max_masks: int = 12
    span_prob: float = 0.2
    k_test: int = 16
    one_to_one: bool = False
    pool: str = "cls"  # "cls" | "mean"


@dataclass
class Config:
    """The whole training configuration (api.md "Configuration keys")."""

    method: str = "ccrk"
    data: Any = "multi30k"
    languages: List[str] = field(default_factory=lambda: ["en", "de", "fr", "cs"])
    text_encoder: Optional[str] = None  # None = the shipped e5 encoder
    epochs: int = 10
    max_steps: Optional[int] = None
    batch_size: int = 64
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    resume: Optional[str] = None
    num_workers: int = 0
    log_every: int = 10
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    nrccr: NRCCRConfig = field(default_factory=NRCCRConfig)
    cl2cm: CL2CMConfig = field(default_factory=CL2CMConfig)
    ccrk: CCRkConfig = field(default_factory=CCRkConfig)

    def method_cfg(self):
        """The section of the configured method."""
        return getattr(self, self.method)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _valid_keys(obj) -> List[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _set(obj, key: str, value, where: str) -> None:
    """Set ``obj.key`` (recursing into sections for dicts); unknown keys raise ValueError listing valid ones."""
    valid = _valid_keys(obj)
    if key not in valid:
        raise ValueError(f"unknown config key {where + key!r}; valid keys here: {', '.join(valid)}")
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ValueError(f"config section {where + key!r} must be a mapping, got {type(value).__name__}")
        for k, v in value.items():
            _set(current, k, v, where + key + ".")
        return
    setattr(obj, key, value)


def apply_overrides(cfg: Config, overrides: Dict[str, Any]) -> Config:
    """Apply ``{"optim.lr": 1e-4, "epochs": 2, "nrccr": {...}}`` in place (dotted names go into sections)."""
    for key, value in overrides.items():
        parts = key.split(".")
        obj = cfg
        for i, p in enumerate(parts[:-1]):
            valid = _valid_keys(obj)
            if p not in valid or not dataclasses.is_dataclass(getattr(obj, p)):
                raise ValueError(f"unknown config section {'.'.join(parts[:i + 1])!r}; valid keys here: {', '.join(valid)}")
            obj = getattr(obj, p)
        _set(obj, parts[-1], value, ".".join(parts[:-1]) + ("." if len(parts) > 1 else ""))
    return cfg


def validate(cfg: Config) -> Config:
    """Check values that have a closed set of choices."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {cfg.device!r}")
    if cfg.optim.schedule not in ("constant", "linear", "cosine", "plateau"):
        raise ValueError(f"optim.schedule must be constant|linear|cosine|plateau, got {cfg.optim.schedule!r}")
    if cfg.optim.optimizer not in ("adam", "adamw"):
        raise ValueError(f"optim.optimizer must be 'adam' or 'adamw', got {cfg.optim.optimizer!r}")
    for name in ("epochs", "batch_size"):
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps is not None and int(cfg.max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {cfg.max_steps}")
    if cfg.optim.grad_accum < 1:
        raise ValueError(f"optim.grad_accum must be >= 1, got {cfg.optim.grad_accum}")
    if cfg.optim.lr is not None:
        cfg.lr = float(cfg.optim.lr)
    if isinstance(cfg.languages, str):
        cfg.languages = [s for s in cfg.languages.replace(",", " ").split() if s]
    return cfg


def read_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON file into a dict."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(config: Union[None, str, Path, Dict[str, Any], Config] = None, **overrides) -> Config:
    """Build a validated :class:`Config` from a path, a dict, a Config (copied) or None (defaults), then overrides."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = from_dict(config.to_dict())
    elif isinstance(config, (str, Path)):
        cfg = from_dict(read_file(config))
    elif isinstance(config, dict):
        cfg = from_dict(config)
    else:
        raise TypeError(f"config must be None, a path, a dict or a Config, got {type(config).__name__}")
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

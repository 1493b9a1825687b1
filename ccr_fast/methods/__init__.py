"""The training methods: ``baseline``, ``linear``, ``nrccr``, ``cl2cm``, ``ccrk`` (see :mod:`.base` for the interface)."""
from .base import Method
from .baseline import Baseline
from .ccrk import CCRk
from .cl2cm import CL2CM
from .linear import Linear
from .nrccr import NRCCR

METHODS = {"baseline": Baseline, "linear": Linear, "nrccr": NRCCR, "cl2cm": CL2CM, "ccrk": CCRk}


def build_method(cfg) -> Method:
    """Instantiate the method named by ``cfg.method``."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {cfg.method!r}")
    method = METHODS[cfg.method].build(cfg)
    if getattr(cfg, "visual_encoder", None):  # a trainable vision tower's top runs in front of method.visual
        from ..data.media_data import attach_tower

        attach_tower(method)
    return method


__all__ = ["Method", "Baseline", "Linear", "NRCCR", "CL2CM", "CCRk", "METHODS", "build_method"]

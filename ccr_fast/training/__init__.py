"""Training: :mod:`.loop` (build, fit, one epoch, validate, test; the ``train``/``evaluate`` entry points),
:mod:`.checkpoint` (atomic save, strict load, exact resume, export), :mod:`.distributed` (torchrun)."""
from __future__ import annotations

from .checkpoint import export_checkpoint, load_checkpoint_model
from .loop import DEFAULT_RUN, TrainResult, evaluate, train

__all__ = ["train", "evaluate", "TrainResult", "DEFAULT_RUN", "load_checkpoint_model", "export_checkpoint"]

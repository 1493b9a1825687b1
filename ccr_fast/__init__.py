"""ccr_fast: fused kernels and training/evaluation for cross-lingual cross-modal retrieval.

Public modules: :mod:`ccr_fast.losses`, :mod:`ccr_fast.retrieval`, :mod:`ccr_fast.metrics`; entry points
:func:`train` and :func:`evaluate`; :func:`load` (a checkpoint as a :class:`Retriever`) and the exact
:class:`Index`; :func:`backends` reports the compiled/usable kernel backends.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import backends  # noqa: E402 - a callable package: ccr_fast.backends() is the report
from . import losses, metrics, retrieval  # noqa: E402,F401
from .inference import Index, Retriever, load  # noqa: E402,F401


def train(config=None, **overrides):
    """Train the method named in ``config`` (see :func:`ccr_fast.training.train`)."""
    from .training import train as _train

    return _train(config, **overrides)


def extract_features(visual_encoder, images, out, *, batch_size=64, dtype="float16", tokens="pooled", device="auto",
                     **kw) -> str:
    """Vision-tower features of ``images`` written as ``out`` (``.npy``) + ``.ids.txt``; returns the ``.npy`` path
    (see :func:`ccr_fast.inference.extract.extract_features`)."""
    from .inference.extract import extract_features as _extract

    return _extract(visual_encoder, images, out, batch_size=batch_size, dtype=dtype, tokens=tokens, device=device,
                    **kw)


def evaluate(checkpoint, data=None, **overrides):
    """Evaluate a checkpoint (see :func:`ccr_fast.training.evaluate`)."""
    from .training import evaluate as _evaluate

    return _evaluate(checkpoint, data=data, **overrides)


__all__ = ["backends", "losses", "metrics", "retrieval", "train", "evaluate", "load", "Index", "Retriever",
           "extract_features", "__version__"]

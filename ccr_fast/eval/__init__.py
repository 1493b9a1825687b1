"""Evaluation pipeline: encode in batches, rank with :func:`ccr_fast.retrieval.target_ranks`, metrics of
:mod:`ccr_fast.metrics`, NRCCR translate-test fusion (streamed), CCR^k MRV, COCO-style folds, tables and JSON."""
from __future__ import annotations

from .evaluator import METRIC_KEYS, encode_in_batches, evaluate_encoders, ranks_from_embeddings
from .fusion import fused_ranks
from .report import flatten_results, format_table, load_results, save_results

__all__ = ["evaluate_encoders", "encode_in_batches", "ranks_from_embeddings", "fused_ranks", "format_table",
           "flatten_results", "save_results", "load_results", "METRIC_KEYS"]

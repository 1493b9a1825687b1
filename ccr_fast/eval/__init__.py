"""Evaluation pipeline (used by training and inference; it imports neither): encode in batches, rank with :func:`ccr_fast.retrieval.target_ranks`, metrics of
:mod:`ccr_fast.metrics`, NRCCR translate-test fusion (streamed), CCR^k MRV, COCO-style folds, tables and JSON."""
from __future__ import annotations

from .evaluator import METRIC_KEYS, encode_in_batches, evaluate_encoders, ranks_from_embeddings
from .fusion import fused_ranks
from .report import flatten_results, format_table, load_results, save_results
from .scoring import (evaluate_method, flat_metrics, format_metrics, metrics_from_scores, ranks_from_scores,
                      rerank_results, rerank_scores)

# Evaluating a checkpoint (loading it, building its eval sets) is training's business: ccr_fast.evaluate /
# ccr_fast.training.evaluate. eval/ never imports training/ (python_tests/test_import_graph.py).

__all__ = ["evaluate_encoders", "encode_in_batches", "ranks_from_embeddings", "fused_ranks", "format_table",
           "flatten_results", "save_results", "load_results", "METRIC_KEYS", "evaluate_method", "format_metrics",
           "flat_metrics", "metrics_from_scores", "ranks_from_scores", "rerank_results", "rerank_scores"]

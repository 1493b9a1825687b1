"""Chance level of the retrieval metrics, and their internal consistency, for tests.

``chance_sumr``: the expected SumR of a ranking drawn uniformly at random, for a gallery of G visual items and the
number of captions of each item (t2v: one query per caption, its item's rank uniform over G; v2t: one query per item
with captions, the best rank of its c captions among all Q captions).
``assert_consistent``: what every metrics dict must satisfy, whatever the model learned.
"""
from __future__ import annotations

from math import comb
from typing import Sequence

import pytest

KS = (1, 5, 10)
RECALLS = [f"{d}_r{k}" for d in ("t2v", "v2t") for k in KS]


def chance_sumr(captions_per_item: Sequence[int]) -> float:
    """Expected SumR (percent, six recalls) of a random ranking; ``captions_per_item[i]`` = captions of item i."""
    counts = [int(c) for c in captions_per_item]
    g, q = len(counts), sum(counts)
    if g == 0 or q == 0:
        raise ValueError("captions_per_item: expected at least one item with a caption")
    t2v = sum(min(k, g) / g for k in KS)
    with_caps = [c for c in counts if c > 0]
    v2t = sum(sum(1.0 - (comb(q - c, k) / comb(q, k) if k < q else 0.0) for c in with_caps) / len(with_caps)
              for k in KS)
    return 100.0 * (t2v + v2t)


def assert_consistent(m: dict, n_queries_t2v=None, n_queries_v2t=None) -> None:
    """One language's metrics: recalls are percentages (of whole queries, when the query counts are given),
    R@1 ≤ R@5 ≤ R@10, SumR is their sum and mR their mean, MedR is a 1-based rank."""
    for key in RECALLS:
        n = n_queries_t2v if key.startswith("t2v") else n_queries_v2t
        assert 0 <= m[key] <= 100, (key, m[key])
        if n:
            hits = m[key] * n / 100.0
            assert hits == pytest.approx(round(hits), abs=1e-6), (key, m[key], n)
    for d in ("t2v", "v2t"):
        assert m[f"{d}_r1"] <= m[f"{d}_r5"] <= m[f"{d}_r10"] and m[f"{d}_medr"] >= 1
    assert m["sumr"] == pytest.approx(sum(m[k] for k in RECALLS))
    assert m["mr"] == pytest.approx(m["sumr"] / 6)


def assert_run_metrics_consistent(metrics: dict) -> None:
    """A run's test metrics: every language consistent, the top-level SumR their mean."""
    langs = metrics["languages"]
    assert langs
    for lang in langs:
        assert_consistent(metrics[lang])
    assert metrics["sumr"] == pytest.approx(sum(metrics[lang]["sumr"] for lang in langs) / len(langs))

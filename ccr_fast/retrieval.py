"""Fused similarity + ranking (api contract: ``ccr_fast.retrieval``).

* :func:`similarity` — the Q×G inner-product matrix (re-exported from :mod:`ccr_fast.ops.similarity`);
* :func:`topk` — the k best gallery items per query, streamed (never the Q×G matrix);
* :func:`target_ranks` — the stable 0-based rank of each query's target(s), streamed (memory O(Q + G)).

Embeddings are used as given (inner products; L2-normalise them first for cosine scores).
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .ops.ranks import count_target_ranks
from .ops.similarity import similarity
from .ops.topk import streaming_topk

__all__ = ["similarity", "topk", "target_ranks"]


def topk(queries: Tensor, gallery: Tensor, k: int, *, block_size: Optional[int] = None,
         backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """The k highest inner products per query, sorted descending, ties broken by the lower gallery index.

    Args:
        queries: [Q, d] float tensor (fp32/fp16/bf16; fp64 on CPU). gallery: [G, d], same device and dtype.
        k: results per query, 1 <= k <= G (``k > G`` raises ValueError).
        block_size: gallery rows per streamed block (None = the backend's default).
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"torch"``.

    Returns:
        ``(scores [Q, k] in the input dtype, indices [Q, k] int64)``.

    Notes:
        Memory O(Q·k) besides the inputs. Exact: the order is that of the float64 scores, ties to the lower
        index, on every backend (fast candidates, a proven error bound, float64 settling: docs/exactness.md);
        the scores are the float64 scores in the input dtype.
    """
    return streaming_topk(queries, gallery, k, block_size=block_size, backend=backend)


def target_ranks(queries: Tensor, gallery: Tensor, targets: Tensor, *, backend: str = "auto") -> Tensor:
    """0-based rank of each query's target(s) in the stable descending order of its scores.

    ``rank(t) = #{c : s_c > s_t} + #{c : s_c == s_t and c < t}`` on the float64 scores (exact on every backend:
    docs/exactness.md).

    Args:
        queries: [Q, d] float tensor. gallery: [G, d], same device and dtype.
        targets: int64 [Q], or [Q, T] padded with −1 (the best rank among the valid targets is returned).
        backend: ``"auto"``, ``"cuda"``, ``"triton"``, ``"cpu"`` or ``"torch"``.

    Returns:
        ranks [Q] int64 (−1 for a row without a valid target).

    Notes:
        Streams the gallery; memory O(Q·T + G) besides the inputs.
    """
    return count_target_ranks(queries, gallery, targets, backend=backend)

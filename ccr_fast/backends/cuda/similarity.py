"""``"cuda"`` similarity host functions (docs/interop.md, "similarity") over ``ccr_fast._C``."""
from __future__ import annotations

import torch

from ..registry import DTYPE_CODES
from ._common import ext, pair, ld, stream


def similarity(q, g):
    """scores [Q, G] float32 = q g^T (fp32 accumulation; the ops layer casts to the input dtype)."""
    q, g = pair("q", q, "g", g)
    Q, d = q.shape
    G = g.shape[0]
    dev = q.device
    C = ext()
    with torch.cuda.device(dev):
        out = torch.empty(Q, G, dtype=torch.float32, device=dev)
        C.similarity_cuda(q.data_ptr(), g.data_ptr(), Q, G, d, ld(q), ld(g), DTYPE_CODES[q.dtype],
                          out.data_ptr(), ld(out), dev.index, stream(dev))
    return out

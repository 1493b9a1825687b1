"""``"cpu"`` sigmoid (SigLIP) host functions (contract: ``ccr_fast/ops/sigmoid.py``) over ``ccr_fast._C``."""
from __future__ import annotations

from typing import Tuple

import torch

from .._operands import cpu_pair
from ..registry import DTYPE_CODES, extension

Tensor = torch.Tensor


def run(entry: str, x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, k: int, pos_off: int, positives: bool,
        weight: float, need_grad: bool, tile_m: int = 0, tile_n: int = 0
        ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Call the C++ kernel ``entry`` (``sigmoid_forward_cpu`` or ``blas_sigmoid_forward``) on CPU operands."""
    x, y = cpu_pair(x, y)
    M, N, d = x.shape[0], y.shape[0], x.shape[1]
    acc = x.dtype
    out3 = torch.empty(3, dtype=acc)
    if need_grad:
        dx, dy = torch.empty(M, d, dtype=acc), torch.empty(N, d, dtype=acc)
        parts = torch.empty(extension().cpu_num_threads(), N, d, dtype=acc)
        ptrs = (dx.data_ptr(), dy.data_ptr(), parts.data_ptr())
    else:
        dx, dy = torch.empty(0, dtype=acc), torch.empty(0, dtype=acc)
        ptrs = (0, 0, 0)
    getattr(extension(), entry)(x.data_ptr(), y.data_ptr(), M, N, d, x.stride(0), y.stride(0), DTYPE_CODES[acc],
                                float(scale), float(bias), int(k), int(pos_off), bool(positives), float(weight),
                                bool(need_grad), out3.data_ptr(), *ptrs, tile_m=tile_m, tile_n=tile_n)
    loss, dscale, dbias = (t.clone() for t in out3)  # separate tensors (custom-op outputs must not alias)
    return loss, dx, dy, dscale, dbias


def sigmoid_forward(x: Tensor, y: Tensor, scale: Tensor, bias: Tensor, k: int, pos_off: int, positives: bool,
                    weight: float, need_grad: bool, *, tile_m: int = 0, tile_n: int = 0
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """loss, dx [M, d], dy [N, d], dscale, dbias (acc dtype; dx, dy empty unless ``need_grad``) of the fused
    kernel (our tile GEMM). ``tile_m``/``tile_n`` override the tile sizes (tests)."""
    return run("sigmoid_forward_cpu", x, y, scale, bias, k, pos_off, positives, weight, need_grad, tile_m, tile_n)

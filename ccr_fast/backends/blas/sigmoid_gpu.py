"""``"blas"`` sigmoid (SigLIP) host function for CUDA tensors: row chunks of the scores through cuBLAS
(``torch.matmul`` in the operands' dtype: bf16/fp16 GEMMs with fp32 accumulation) and a float32 epilogue;
O(chunk·N) memory. The loop is :func:`ccr_fast.backends.blas.sigmoid.chunked`."""
from __future__ import annotations

from .sigmoid import chunked as sigmoid_forward

__all__ = ["sigmoid_forward"]

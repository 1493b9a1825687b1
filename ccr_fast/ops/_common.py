"""Small helpers shared by the op families: the accumulation dtype and operand layout (defined one layer down, in
:mod:`ccr_fast.backends._operands`), and the argument checks under their older names (defined in
:mod:`ccr_fast.ops._validate`, the one copy)."""
from __future__ import annotations

from ..backends._operands import acc_dtype, cpu_operand, rows_contiguous  # noqa: F401
from ._validate import FLOAT_DTYPES, check_finite, check_same, check_tensor  # noqa: F401
from ._validate import check_scale as as_scale  # noqa: F401

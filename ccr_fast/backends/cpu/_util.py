"""Operand helpers of the C++ CPU backends (``cpu`` and ``blas``)."""
from __future__ import annotations

from .._operands import cpu_operand, cpu_pair  # noqa: F401 - the helpers live one layer down, in backends/

"""Backends by folder: ``cpu``, ``blas``, ``cuda``, ``triton``.

Each ``ccr_fast.backends.<name>.<family>`` module holds that backend's host functions of the kernel contract
(docs/interop.md), under the contract names (``contrastive_forward``, ``contrastive_backward``,
``triplet_forward``, ``triplet_backward``, ``topk``, ``target_ranks``, ``similarity``). Host functions take torch
tensors, lay the operands out as their kernels need, allocate the outputs and call the kernels; validation of the
public arguments and the choice of a backend happen once, in :mod:`ccr_fast.ops.dispatch`.

:mod:`ccr_fast.backends.registry` says what is built and usable here (the ``_C`` loader, the CPU GEMM of ``blas``);
:mod:`ccr_fast.backends._operands` lays operands out for the C++ kernels. Nothing in this package imports
``ccr_fast.ops`` (the layer above).
"""
import sys as _sys
import types as _types


class _CallablePackage(_types.ModuleType):
    """``ccr_fast.backends`` is both this package and the public report function ``ccr_fast.backends()``: importing a submodule
    binds the package to the ``ccr_fast.backends`` attribute, so calling it must still give the report."""

    def __call__(self, *args, **kwargs):
        from .registry import backends as report  # noqa: PLC0415

        return report(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage

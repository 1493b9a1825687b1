"""Backends by folder: ``cpu``, ``blas``, ``cuda``, ``triton``.

Each ``ccr_fast.backends.<name>.<family>`` module holds that backend's host functions of the kernel contract
(docs/interop.md), under the contract names (``contrastive_forward``, ``contrastive_backward``,
``triplet_forward``, ``triplet_backward``, ``topk``, ``target_ranks``, ``similarity``). Host functions take torch
tensors, lay the operands out as their kernels need, allocate the outputs and call the kernels; validation of the
public arguments and the choice of a backend happen once, in :mod:`ccr_fast.ops.dispatch`.
"""

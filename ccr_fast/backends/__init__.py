"""Backends by folder: cpu, blas, cuda, triton (host functions with the kernel contract of docs/interop.md)."""

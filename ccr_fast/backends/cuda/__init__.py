"""``"cuda"`` backend: host functions over the CUDA kernels of ``ccr_fast._C`` (docs/interop.md, "The kernel-level contract";
design: docs/cuda.md), one module per op family.

Torch tensors in, torch tensors out. Each function validates device / dtype / shapes, allocates the outputs and the
workspace with torch (the caching allocator owns all memory), and calls ``ccr_fast._C.<fn>_cuda`` on the current
stream of the inputs' device. Nothing here synchronises the device (``scale`` stays a device tensor); the one
exception is ``target_ranks``, which checks that the target indices are in range (a host read of two scalars).

Inputs may be float32, float16 or bfloat16 (accumulation is always float32; float64 is not supported on CUDA and
raises). Outputs named "acc" in the contract are float32. Rows must be contiguous along the feature axis; a
row-strided 2-D view is passed as is, anything else is made contiguous.
"""

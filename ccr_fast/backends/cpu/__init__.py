"""``"cpu"`` backend: host functions over the fully fused C++/OpenMP kernels of ``ccr_fast._C`` (csrc/cpu).

Memory O(N·d) (no score matrix), float32/float64 (float16/bfloat16 operands are widened to float32 first).
"""

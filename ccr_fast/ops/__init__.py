"""Op families (contrastive, triplet, topk, ranks, similarity): each module holds the float64-testable torch
reference, the ``torch.library.custom_op`` registration with its fake and autograd, and ``HOST``, the table of its
backends' host functions (``ccr_fast.backends.<name>.<family>``). :mod:`.dispatch` is the one place that resolves a
backend and applies the dtype/autocast policy (docs/interop.md)."""

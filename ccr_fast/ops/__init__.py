"""Op families: each module holds the plain-torch reference, the backend host functions, the autograd Function
and the ``torch.library.custom_op`` registration (docs/interop.md)."""

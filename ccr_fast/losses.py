"""Public contrastive / ranking losses (api contract: ``ccr_fast.losses``). Thin, documented, validated;
the numerics live in :mod:`ccr_fast.ops`."""
from __future__ import annotations

# OWNER: contrastive helper fills clip_loss / one_to_k_loss / ClipLoss / OneToKLoss / similarity_distillation_loss;
# triplet helper provides ccr_fast.ops.triplet.triplet_loss.

"""Fused similarity + ranking (api contract: ``ccr_fast.retrieval``)."""
from __future__ import annotations

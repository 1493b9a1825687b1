"""Retrieval metrics (api contract: ``ccr_fast.metrics``)."""
from __future__ import annotations

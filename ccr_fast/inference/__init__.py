"""Retrieval with a trained model: :func:`load` → :class:`Retriever` (encode, index, search) and the exact,
disk-backed :class:`Index`."""
from __future__ import annotations

from .index import Index
from .retriever import Retriever, fingerprint, load

__all__ = ["Index", "Retriever", "load", "fingerprint"]

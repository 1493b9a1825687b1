"""Data layer: the :class:`CCRData` format, readers, the shipped real data, synthetic data and datasets.

Readers return plain Python/numpy; datasets yield raw strings + numpy; tokenisation happens in
:mod:`ccr_fast.data.collate`.
"""
from __future__ import annotations

from .core import CCRData, translation_source
from .datasets import (CCRkDataset, CL2CMDataset, EvalSet, NRCCRDataset, PairDataset, ParallelTextDataset,
                       concat_datasets, make_eval_sets)
from .readers import DataFormatError, load_jsonl_collection, load_nrccr_collection
from .shipped import SHIPPED_LANGUAGES, load_shipped, shipped_data_dir, shipped_split_indices
from .synthetic import make_synthetic

__all__ = [
    "CCRData", "translation_source", "SHIPPED_LANGUAGES", "load_shipped", "shipped_data_dir", "shipped_split_indices",
    "make_synthetic", "DataFormatError", "load_nrccr_collection", "load_jsonl_collection", "PairDataset",
    "NRCCRDataset", "CL2CMDataset", "CCRkDataset", "ParallelTextDataset", "EvalSet", "make_eval_sets",
    "concat_datasets",
]

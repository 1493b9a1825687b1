"""Where the project's shipped folders (``data/`` with the real CCR data, ``models/`` with the offline encoder) are.

Looked up in this order: the environment variable (``CCR_FAST_DATA`` / ``CCR_FAST_MODELS``), the source checkout
next to the package (editable install or running from the repo), the checkout the package was built from
(recorded at build time in ``ccr_fast/_build_info.py``), and ``./data`` / ``./models`` under the current directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional


def _candidates(env_var: str, folder: str) -> List[Path]:
    out: List[Path] = []
    env = os.environ.get(env_var)
    if env:
        out.append(Path(env))
    out.append(Path(__file__).resolve().parent.parent / folder)
    try:
        from ._build_info import SOURCE_DIR  # type: ignore

        out.append(Path(SOURCE_DIR) / folder)
    except ImportError:
        pass
    out.append(Path.cwd() / folder)
    return out


def find_folder(env_var: str, folder: str, must_contain: Optional[str] = None) -> Path:
    """First existing candidate folder (containing ``must_contain`` when given); FileNotFoundError otherwise."""
    cands = _candidates(env_var, folder)
    for c in cands:
        if c.is_dir() and (must_contain is None or (c / must_contain).exists()):
            return c
    tried = ", ".join(str(c) for c in cands)
    raise FileNotFoundError(
        f"cannot find the shipped '{folder}/' folder (tried: {tried}); run from the ccr_fast checkout or set {env_var}"
    )


def data_root() -> Path:
    """The shipped data folder (``data/``)."""
    return find_folder("CCR_FAST_DATA", "data", must_contain="README.md")


def models_root() -> Path:
    """The shipped models folder (``models/``)."""
    return find_folder("CCR_FAST_MODELS", "models")

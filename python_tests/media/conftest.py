"""Fixtures for the media tests (helpers in media_helpers.py): tiny towers built once per session, an image set."""
from __future__ import annotations

import pytest

from media_helpers import make_tower, write_csv, write_images


@pytest.fixture(scope="session")
def towers(tmp_path_factory):
    """kind -> folder of a saved tiny tower (built once per session)."""
    root = tmp_path_factory.mktemp("towers")
    cache = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = make_tower(kind, root / kind)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def image_set(tmp_path_factory):
    """A folder with 24 mixed images and two CSVs over them (train: 16 images, test: 8; en + de)."""
    root = tmp_path_factory.mktemp("media")
    names = write_images(root / "images", 24)
    rel = [f"images/{n}" for n in names]
    write_csv(root / "train.csv", rel[:16])
    write_csv(root / "val.csv", rel[16:])
    write_csv(root / "test.csv", rel[16:])
    return root

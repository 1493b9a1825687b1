"""``files.mt_stand_in`` on the shipped default data: the shipped data has no machine translation, and its training
split in the default run (``train_captions="all"``) has 5 en, 6 de and 1 fr/cs caption per image, so the stand-in
target caption of en caption j is target caption ``j mod n`` of the same image. The methods that read MT pairs
(nrccr, baseline, cl2cm) train on it exactly as a user calls them (the built-in default's data, with the method and
the flag as the only changes), with the tiny test encoder and 2 steps to keep it quick."""
from pathlib import Path

import numpy as np
import pytest

import ccr_fast
from ccr_fast.data import CL2CMDataset, NRCCRDataset, load_shipped
from ccr_fast.data.datasets import caption_counts


@pytest.fixture(scope="module")
def shipped_all():
    return load_shipped("train", captions="all")


def test_stand_in_cycles_target_captions_of_the_same_image(shipped_all):
    d = shipped_all
    assert not any(t.startswith("en2") for t in d.translations)  # nothing to use without the flag
    with pytest.raises(ValueError, match="en2de.*files.mt_stand_in"):
        NRCCRDataset(d, "en", "de")
    n_en = caption_counts(d.captions["en"])
    for tgt in ("de", "fr"):
        n_tgt = caption_counts(d.captions[tgt])
        assert (n_en != n_tgt).any()  # the case that failed: counts differ per image
        nr, cl = NRCCRDataset(d, "en", tgt, stand_in=True), CL2CMDataset(d, "en", tgt, stand_in=True)
        assert len(nr) == len(cl) == int(n_en.sum())  # one tuple per en caption
        for n in (0, 1, 4, 5, 9, len(nr) - 1):
            i, j = int(nr.item[n]), int(nr.pos[n])
            got = nr[n]
            assert got["src"] == d.captions["en"][i][j]
            assert got["tgt"] == cl[n]["tgt"] == d.captions[tgt][i][j % int(n_tgt[i])]
            assert got["back"] == got["src"]  # the documented back-translation stand-in: the source caption
    # en caption 0 of an image is the task 1 caption, and de caption 0 its professional translation
    de = NRCCRDataset(d, "en", "de", stand_in=True)
    assert de[0]["tgt"] == d.captions["de"][0][0]


def test_stand_in_item_without_a_target_caption_is_named(shipped_all):
    d = shipped_all.subset(np.arange(20))
    d.captions["fr"] = [[] if i == 3 else c for i, c in enumerate(d.captions["fr"])]
    with pytest.raises(ValueError, match=rf"item '{d.visual_ids[3]}' has 5 'en' captions but no 'fr' caption"):
        CL2CMDataset(d, "en", "fr", stand_in=True)


# The tiny random-init text encoder replaces e5 (no encoder pass over 3,500 captions on a shared 2-core machine);
# visual_dim stays unset (read from the 2048-d shipped features).
QUICK = {"model.tiny_text_encoder": 32, "model.tiny_text_layers": 1, "model.text_hidden": 32,
         "model.qk_dim": 32, "model.heads": 4, "max_steps": 2, "batch_size": 32, "progress": False, "device": "cpu"}


@pytest.mark.parametrize("method", ["nrccr", "baseline", "cl2cm"])
def test_methods_train_on_shipped_default_data_with_stand_in(method, tmp_path):
    with pytest.raises(ValueError, match="files.mt_stand_in"):  # the advice the error gives ...
        ccr_fast.train(method=method, output_dir=str(tmp_path / "no"), **QUICK)
    res = ccr_fast.train(method=method, output_dir=str(tmp_path), **QUICK, **{"files.mt_stand_in": True})
    assert Path(res.best_checkpoint, "model.safetensors").is_file()  # ... works
    assert res.metrics["languages"] == ["de", "fr", "cs"] and np.isfinite(res.metrics["sumr"])
    assert res.history and all(np.isfinite(h.get("total", 0.0)) for h in res.history)

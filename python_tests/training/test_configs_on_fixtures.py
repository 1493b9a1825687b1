"""Every shipped config trains 2 steps on a miniature collection written in its own release layout and file names,
changing only ``data`` and ``text_encoder`` (the tiny test encoder replaces the paper's, so its layer list goes),
plus, for the 2-core CPU test machine, the widths of the trained parts: the paper's CCR^k fusion stack (6 layers
of width 1024 and an MLM head over a 250k vocabulary) and 1536-d common spaces cost gigabytes and minutes here."""
from pathlib import Path

import pytest

import ccr_fast
from ccr_fast.config import CONFIG_DIR, config_names, config_path, load_config
from ccr_fast.data.fixtures import fixture_collection
from _chance import assert_run_metrics_consistent

# The configs ship inside the package (ccr_fast/configs/), so they are found installed as well as in the checkout.
CONFIGS = [config_path(n) for n in config_names() if n != "default"]
TINY_ENCODER = {"text_encoder": None, "model.tiny_text_encoder": 32, "model.tiny_text_layers": 2,
                "model.trainable_layers": None, "device": "cpu", "progress": False}
CPU_SIZES = {"model.embed_dim": 32, "model.visual_hidden": 32, "model.text_hidden": 32, "model.qk_dim": 32,
             "ccrk.fusion_width": 32, "ccrk.fusion_layers": 1}


CORE = {"nrccr_multi30k_de", "baseline_multi30k_de", "cl2cm_multi30k_de", "nrccr_vatex_zh", "ccrk_multi30k_finetune"}
# No configs found must fail, not collect an empty (skipped) parametrisation.
PARAMS = [pytest.param(p, id=p.stem, marks=() if p.stem in CORE else pytest.mark.slow) for p in CONFIGS] or \
    [pytest.param(None, id="no-shipped-configs-found")]


def test_shipped_configs_are_found():
    names = set(config_names())
    assert CORE <= names, f"shipped configs missing under {CONFIG_DIR}: {sorted(CORE - names)}"
    assert len(names) >= 20
    assert {load_config(n).method for n in names} == {"baseline", "nrccr", "cl2cm", "ccrk"}


@pytest.mark.parametrize("path", PARAMS)
def test_config_trains_two_steps_on_its_fixture(path, tmp_path):
    assert path is not None, f"no shipped configs found under {CONFIG_DIR}"
    cfg = load_config(path)
    frames = 3 if cfg.model.visual_encoder == "transformer" else None
    root = fixture_collection(tmp_path / (cfg.files.coll or "coll"), cfg, n_items=16, frames=frames)
    media = {"visual_encoder": None} if cfg.visual_encoder else {}  # fixtures hold features (media: python_tests/media)
    res = ccr_fast.train(str(path), data=str(root), output_dir=str(tmp_path / "runs"), max_steps=2,
                         **TINY_ENCODER, **CPU_SIZES, **media)
    assert Path(res.best_checkpoint, "model.safetensors").is_file()
    # 2 steps, tested on the fixture's 4 test images (chance SumR 450 of 600): no margin over chance is possible;
    # the metrics must be consistent (learning is tested on the shipped data: test_default_run.py)
    assert_run_metrics_consistent(res.metrics)
    again = ccr_fast.evaluate(res.best_checkpoint)
    assert again["sumr"] == pytest.approx(res.metrics["sumr"])

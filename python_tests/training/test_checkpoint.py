"""Checkpoints: the frozen encoder is referenced by path + content hash (not stored), strict loads name missing /
unexpected weights, a self-contained export, optim.head_lr_mult."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ccr_fast
from ccr_fast.config import load_config
from ccr_fast.methods import build_method
from ccr_fast.methods._tiny import TINY
from ccr_fast.training import export_checkpoint

SYN = {**TINY, "model.visual_dim": None, "data": {"name": "synthetic", "n_items": 40}, "languages": ["en", "de"],
       "batch_size": 4, "epochs": 1}


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A small random BERT saved as a local Hugging Face folder (with the shipped tokenizer)."""
    from transformers import BertConfig, BertModel

    from ccr_fast.models.text import load_tokenizer

    tok = load_tokenizer(None)
    d = tmp_path_factory.mktemp("enc") / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, pad_token_id=tok.pad_token_id), add_pooling_layer=False) \
        .save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _run(tmp_path, enc, **kw):
    cfg = {k: v for k, v in SYN.items() if not k.startswith("model.tiny")}
    return ccr_fast.train(dict(cfg, method="baseline", text_encoder=str(enc), output_dir=str(tmp_path / "runs"),
                               **{"model.trainable_layers": [], **kw}), max_steps=2)


def test_frozen_encoder_is_referenced_not_stored(tmp_path, encoder_dir):
    enc = tmp_path / "enc"
    shutil.copytree(encoder_dir, enc)
    res = _run(tmp_path, enc)
    weights = load_file(str(Path(res.best_checkpoint) / "model.safetensors"))
    assert weights and not any(k.startswith("text.encoder.") for k in weights)
    assert ccr_fast.evaluate(res.best_checkpoint)["sumr"] == pytest.approx(res.metrics["sumr"])
    exported = export_checkpoint(res.best_checkpoint, tmp_path / "export")
    # the encoder changes: loading the checkpoint fails clearly, the self-contained export still loads
    from transformers import BertModel

    m = BertModel.from_pretrained(enc)
    with torch.no_grad():
        m.embeddings.word_embeddings.weight.add_(1.0)
    m.save_pretrained(enc)
    with pytest.raises(ValueError, match="not the one it was trained with"):
        ccr_fast.evaluate(res.best_checkpoint)
    shutil.rmtree(enc)
    assert ccr_fast.evaluate(exported)["sumr"] == pytest.approx(res.metrics["sumr"])


def test_trained_encoder_layers_are_stored(tmp_path, encoder_dir):
    res = _run(tmp_path, encoder_dir, **{"model.trainable_layers": [1]})
    keys = load_file(str(Path(res.best_checkpoint) / "model.safetensors")).keys()
    assert any(k.startswith("text.encoder.encoder.layer.1.") for k in keys)
    assert not any(k.startswith("text.encoder.encoder.layer.0.") for k in keys)
    assert ccr_fast.evaluate(res.best_checkpoint)["sumr"] == pytest.approx(res.metrics["sumr"])


def test_strict_load_names_missing_and_unexpected_weights(tmp_path):
    res = ccr_fast.train(dict(SYN, method="baseline", output_dir=str(tmp_path)), max_steps=1)
    path = Path(res.best_checkpoint) / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    w = load_file(str(path))
    w.pop("map_v.linear.weight")
    w["head.extra_thing"] = torch.zeros(1)
    save_file(w, str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"missing \['map_v.linear.weight'\], unexpected \['head.extra_thing'\]"):
        ccr_fast.evaluate(res.best_checkpoint)


def test_head_lr_mult_sets_the_group_learning_rates():
    cfg = load_config(None, **{**TINY, "method": "nrccr", "model.trainable_layers": [1], "optim.head_lr_mult": 10.0})
    groups = {g["name"]: g for g in build_method(cfg).param_groups(1e-4, cfg.optim.head_lr_mult)}
    assert groups["text_encoder"]["lr"] == pytest.approx(1e-4) and groups["heads"]["lr"] == pytest.approx(1e-3)
    assert all(p.requires_grad for g in groups.values() for p in g["params"])
    with pytest.raises(ValueError, match=r"model.trainable_layers: layers \[5\]"):
        build_method(load_config(None, **{**TINY, "method": "nrccr", "model.trainable_layers": [5]}))

"""A trainable vision tower (``model.visual_trainable_layers``): the listed top blocks train (and only they), the
loss falls, the checkpoint holds the trained tower and evaluates / encodes images through it; bad block lists."""
from __future__ import annotations

import json

import pytest
import torch

import ccr_fast
from ccr_fast.models.towers import TowerBottom, TowerTop, load_vision_tower, trainable_start

from test_train_media import FAST, _metrics, csv_data

TRAIN = {**FAST, "max_steps": 6, "epochs": 3, "batch_size": 16, "lr": 3e-3, "log_every": 1,
         "model.visual_trainable_layers": [-1]}


@pytest.mark.parametrize("kind", ["clip", "clip_full", "vit"])
def test_bottom_then_top_equals_the_whole_tower(towers, kind):
    tower = load_vision_tower(towers(kind))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        for layers in ([-1], [0, 1], None):
            k = trainable_start(tower, layers)
            y = TowerTop(tower, k)(TowerBottom(tower, k)(x))
            torch.testing.assert_close(y, tower(x), rtol=1e-5, atol=1e-5)


def test_last_block_trains_alone_loss_falls_checkpoint_evaluates_same(towers, image_set, tmp_path):
    folder = towers("clip")
    res = ccr_fast.train({**TRAIN, "data": csv_data(image_set), "visual_encoder": str(folder),
                          "output_dir": str(tmp_path)})
    steps = [json.loads(line) for line in open(f"{res.run_dir}/metrics.jsonl") if '"total"' in line]
    assert len(steps) == 3 and steps[-1]["total"] < steps[0]["total"]  # one step per epoch (16 images)
    assert _metrics(ccr_fast.evaluate(res.best_checkpoint)) == _metrics(res.metrics)

    retriever = ccr_fast.load(res.best_checkpoint)
    method = retriever.method
    before = dict(load_vision_tower(folder).model.named_parameters())
    after = dict(method.tower_top.tower.model.named_parameters())
    top = method.tower_top.tower.blocks()[-1] + "."
    changed = {n for n in before if not torch.equal(before[n], after[n].cpu())}
    assert changed and all(n.startswith(top) or "post_layernorm" in n for n in changed), changed
    assert any(n.startswith(top) for n in changed)

    # images encode through the trained tower: differs from the untrained one, equals bottom -> trained top
    imgs = sorted(str(p) for p in (image_set / "images").iterdir())[:4]
    emb = method.encode_media(imgs)
    torch.testing.assert_close(retriever.encode_images(imgs).cpu(), emb.cpu(), rtol=0, atol=0)
    feats = torch.as_tensor(method.media_features(imgs))
    assert feats.shape[1] == 17 * 32  # the frozen bottom's states (17 tokens x 32)
    with torch.no_grad():
        fresh = method.tower_top.tower.model.load_state_dict(
            {n: p for n, p in before.items()}, strict=False)  # back to the untrained weights
    assert not fresh.unexpected_keys
    assert not torch.allclose(emb, method.encode_media(imgs))


def test_whole_swin_trains_from_pixels(towers, image_set, tmp_path):
    res = ccr_fast.train({**TRAIN, "max_steps": 2, "epochs": 1, "data": csv_data(image_set),
                          "visual_encoder": str(towers("swin")), "model.visual_trainable_layers": None,
                          "output_dir": str(tmp_path)})
    assert _metrics(ccr_fast.evaluate(res.best_checkpoint)) == _metrics(res.metrics)


@pytest.mark.parametrize("layers", [[2], [-3], [0], ["x"], "all", [True]])
def test_bad_layers_name_the_key(towers, image_set, tmp_path, layers):
    with pytest.raises(ValueError, match="model.visual_trainable_layers"):
        ccr_fast.train({**TRAIN, "data": csv_data(image_set), "visual_encoder": str(towers("clip")),
                        "model.visual_trainable_layers": layers, "output_dir": str(tmp_path)})


def test_tower_top_is_its_own_optimiser_group_at_the_encoder_lr(towers):
    from ccr_fast.config import load_config
    from ccr_fast.data.media_data import tower_out_dim
    from ccr_fast.methods import build_method

    cfg = load_config({"method": "baseline", "visual_encoder": str(towers("clip")), "model.trainable_layers": [],
                       "model.visual_trainable_layers": [-1], "optim.head_lr_mult": 2.0})
    cfg.model.visual_dim = tower_out_dim(cfg)
    method = build_method(cfg)
    groups = {g["name"]: g for g in method.param_groups(1e-4, 2.0)}
    top = [p for p in method.tower_top.parameters() if p.requires_grad]
    assert groups["visual_tower"]["lr"] == 1e-4 and groups["heads"]["lr"] == 2e-4
    assert {id(p) for p in groups["visual_tower"]["params"]} == {id(p) for p in top} and top

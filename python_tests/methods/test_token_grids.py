"""CCR^k on visual token grids ``[N, L, D]``: ITM and CMLM cross-attend to the tokens, not to their mean."""
import numpy as np
import torch

import ccr_fast
from ccr_fast.config import load_config
from ccr_fast.data import make_synthetic
from ccr_fast.methods import build_method
from ccr_fast.methods._tiny import TINY


def _method(**kw):
    torch.manual_seed(0)
    return build_method(load_config(None, **{**TINY, "method": "ccrk", "model.visual_dim": 16, **kw})).eval()


def test_itm_sees_tokens_beyond_their_mean():
    m = _method()
    tok = m.tokenize(["a dog runs", "le chat"])
    grid = torch.randn(3, 5, 16)
    moved = grid.clone()
    moved[:, 0] += 0.5  # same mean over tokens: the pooled ITC input is unchanged ...
    moved[:, 1] -= 0.5
    ti, vi = torch.tensor([0, 1, 0]), torch.tensor([0, 1, 2])
    torch.testing.assert_close(m.embed_visual(moved), m.embed_visual(grid))
    a, b = m.itm_scores(tok, grid, ti, vi), m.itm_scores(tok, moved, ti, vi)
    assert (a - b).abs().max() > 1e-4  # ... but the fusion encoder attends to every token
    # padding tokens (mask 0) are ignored
    mask = torch.ones(3, 6)
    mask[:, 5] = 0
    padded = torch.cat([grid, 100 * torch.randn(3, 1, 16)], 1)
    torch.testing.assert_close(m.itm_scores(tok, padded, ti, vi, visual_mask=mask), a, rtol=1e-5, atol=1e-5)


def test_ccrk_trains_with_itm_and_mlm_on_token_grids(tmp_path):
    data = make_synthetic(24, langs=["en", "de"], feature_dim=16, frames=4, n_concepts=12)
    assert data.features.shape == (24, 4, 16)
    seen = []
    from ccr_fast.models.fusion import FusionEncoder

    orig = FusionEncoder.forward

    def spy(self, text, text_mask, visual, visual_mask=None):
        seen.append(tuple(visual.shape))
        return orig(self, text, text_mask, visual, visual_mask)

    FusionEncoder.forward = spy
    try:
        res = ccr_fast.train(dict(TINY, method="ccrk", languages=["en", "de"], batch_size=8, max_steps=2,
                                  output_dir=str(tmp_path), **{"model.visual_dim": None, "ccrk.w_mlm": 1.0,
                                                               "eval.every_epoch": False}),
                             datasets={"train": data})
    finally:
        FusionEncoder.forward = orig
    assert seen and all(len(s) == 3 and s[1] == 4 for s in seen)  # [B', L=4, H] tokens reach ITM and CMLM
    assert np.isfinite(json_losses(res.run_dir)).all()


def json_losses(run_dir):
    import json
    from pathlib import Path

    return np.array([json.loads(line)["total"] for line in open(Path(run_dir) / "metrics.jsonl") if '"total"' in line])

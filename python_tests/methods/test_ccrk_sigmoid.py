"""CCR^k with ``ccrk.itc_loss="sigmoid"``: SigLIP ITC with a learnable scale and bias (float64 reference, training)."""
import math

import pytest
import torch
import torch.nn.functional as F

from ccr_fast.config import ConfigError, load_config
from ccr_fast.methods import build_method
from ccr_fast.methods._tiny import TINY, tiny_items


def _method(**kw):
    torch.manual_seed(0)
    return build_method(load_config(None, method="ccrk", **{**TINY, "ccrk.itc_loss": "sigmoid", **kw}))


def _siglip64(img, txt, scale, bias):
    B = img.shape[0]
    K = txt.shape[0] // B
    z = scale * img.double() @ txt.double().T + bias
    labels = 2 * torch.eye(B, dtype=torch.float64).repeat_interleave(K, dim=1) - 1
    return -F.logsigmoid(labels * z).sum() / B


def test_init_and_itc_value_matches_float64():
    m = _method()
    assert not hasattr(m, "temp")
    assert math.isclose(float(m.logit_scale()), 10.0, rel_tol=1e-6) and float(m.itc_bias) == -10.0
    batch = m.collate(tiny_items(8))
    m.train()
    out = m.loss_dict(batch)
    txt = m.embed_text(batch["texts"])
    img = m.embed_visual(batch["visual"])
    ref = _siglip64(img, txt, float(m.logit_scale()), float(m.itc_bias))
    torch.testing.assert_close(out["itc"].double(), ref, rtol=1e-5, atol=1e-6)
    out["itc"].backward()
    assert m.itc_log_scale.grad is not None and m.itc_bias.grad is not None
    assert float(m.itc_bias.grad) != 0.0 and float(m.itc_log_scale.grad) != 0.0


def test_one_to_one_uses_the_sigmoid_loss():
    m = _method(**{"ccrk.one_to_one": True})
    m.train()
    out = m.loss_dict(m.collate(tiny_items(6)))
    assert torch.isfinite(out["itc"]) and out["itc"] > 0


def test_training_lowers_the_sigmoid_itc():
    m = _method(**{"ccrk.w_itm": 0.0, "ccrk.w_mlm": 0.0, "ccrk.k_test": 0})
    m.train()
    batch = m.collate(tiny_items(8))
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = m.loss_dict(batch)["itc"]
        first = float(loss) if first is None else first
        loss.backward()
        opt.step()
    last = float(m.loss_dict(batch)["itc"])
    assert last < 0.5 * first, (first, last)
    assert float(m.itc_bias) != -10.0  # the bias trains


def test_config_errors():
    with pytest.raises(ConfigError, match="itc_loss"):
        _method(**{"ccrk.itc_loss": "hinge"})
    with pytest.raises(ConfigError, match="id_aware"):
        _method(**{"ccrk.id_aware": True})
    with pytest.raises(ConfigError, match="sigmoid_scale_init"):
        _method(**{"ccrk.sigmoid_scale_init": 0.0})

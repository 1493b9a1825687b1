"""The drop-in loss modules against open_clip: the whole constructor and ``forward`` signature of ``ClipLoss`` (and
``SigLipLoss``), the keywords open_clip's own loss factory passes, and the values at world size 1.

open_clip is loaded by file path (``<package>/loss.py``, ``<package>/factory.py`` parsed only): ``import open_clip``
needs torchvision, which its loss module does not. The comparisons skip only when open_clip is not installed.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import os

import pytest
import torch

from ccr_fast import losses


def _open_clip_dir():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


@pytest.fixture(scope="module")
def oc_loss():
    folder = _open_clip_dir()
    if folder is None:
        pytest.skip("open_clip is not installed")
    spec = importlib.util.spec_from_file_location("_open_clip_loss_by_path", os.path.join(folder, "loss.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _params(fn, *, drop_keyword_only_extras=False):
    """[(name, kind, default)] of ``fn`` without ``self``; optionally without keyword-only parameters that have a
    default (our extras, e.g. ``backend``)."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self":
            continue
        if drop_keyword_only_extras and p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
            continue
        out.append((p.name, p.kind, p.default))
    return out


_MODULES = ["ClipLoss", "SigLipLoss"]


@pytest.mark.parametrize("name", _MODULES)
@pytest.mark.parametrize("method", ["__init__", "forward"])
def test_signature_equals_open_clip(oc_loss, name, method):
    if not hasattr(losses, name):
        pytest.skip(f"ccr_fast.losses has no {name} yet")
    theirs = _params(getattr(getattr(oc_loss, name), method))
    ours = _params(getattr(getattr(losses, name), method), drop_keyword_only_extras=True)
    assert ours == theirs


def _factory_keywords(cls_name: str) -> set:
    """The keyword names open_clip's ``create_loss`` passes to ``cls_name`` (read from factory.py with ``ast``)."""
    source = open(os.path.join(_open_clip_dir(), "factory.py"), encoding="utf-8").read()
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == cls_name:
            names |= {k.arg for k in node.keywords if k.arg}
    return names


@pytest.mark.parametrize("name", _MODULES)
def test_open_clip_factory_keywords_are_accepted(oc_loss, name):
    if not hasattr(losses, name):
        pytest.skip(f"ccr_fast.losses has no {name} yet")
    keywords = _factory_keywords(name)
    assert keywords, f"open_clip's factory.py builds no {name}"
    defaults = {"rank": 0, "world_size": 1, "use_horovod": False, "dist_impl": None, "cache_labels": True,
                "local_loss": False, "gather_with_grad": False}
    module = getattr(losses, name)(**{k: defaults[k] for k in keywords})
    assert isinstance(module, torch.nn.Module)


def _feats(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "blas", "torch"])
def test_clip_loss_values_and_grads_equal_open_clip(oc_loss, with_bias, backend):
    img, txt = _feats(9, 12, 1), _feats(9, 12, 2)
    results = []
    for mod in (oc_loss.ClipLoss(cache_labels=True, use_horovod=False),
                losses.ClipLoss(cache_labels=True, use_horovod=False, backend=backend)):
        i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
        scale = torch.tensor(7.5, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True) if with_bias else None
        args = (i, t, scale, bias) if with_bias else (i, t, scale)
        out = mod(*args, output_dict=True)
        assert set(out) == {"contrastive_loss"}
        loss = out["contrastive_loss"]
        leaves = [i, t, scale] + ([bias] if with_bias else [])
        grads = torch.autograd.grad(loss, leaves)
        results.append((loss.detach(), grads))
    (want, want_g), (got, got_g) = results
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g_ours, g_theirs in zip(got_g, want_g):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


def test_use_horovod_true_raises_a_clear_error():
    with pytest.raises(ValueError, match="use_horovod=True is not supported.*torch.distributed"):
        losses.ClipLoss(use_horovod=True)
    mod = losses.ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                          use_horovod=False)
    assert mod.use_horovod is False
    a, b = _feats(4, 6, 3), _feats(4, 6, 4)
    torch.testing.assert_close(mod(a, b, 3.0), losses.clip_loss(a, b, 3.0))


def test_constructor_arguments_are_validated():
    with pytest.raises(TypeError, match="local_loss must be a bool"):
        losses.ClipLoss(local_loss="False")
    with pytest.raises(TypeError, match="use_horovod must be a bool"):
        losses.ClipLoss(use_horovod="no")
    with pytest.raises(ValueError, match="rank"):
        losses.ClipLoss(rank=1, world_size=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        losses.ClipLoss(backend="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        losses.OneToKLoss(2, backend="fast")
    with pytest.raises(ValueError, match="margin"):
        losses.TripletLoss(margin=float("nan"))
    with pytest.raises(ValueError, match="reduction"):
        losses.TripletLoss(reduction="none")
    with pytest.raises(TypeError, match="max_violation"):
        losses.TripletLoss(max_violation="yes")
    a, b = _feats(4, 6, 3), _feats(4, 6, 4)
    # the earlier positional form forward(i, t, scale, output_dict) keeps working
    assert set(losses.ClipLoss()(a, b, 3.0, True)) == {"contrastive_loss"}
    torch.testing.assert_close(losses.ClipLoss()(a, b, 3.0, False), losses.ClipLoss()(a, b, 3.0))
    with pytest.raises(TypeError, match="output_dict must be a bool"):
        losses.ClipLoss()(a, b, 3.0, None, torch.ones(()))
    with pytest.raises(ValueError, match="logit_bias"):
        losses.ClipLoss()(a, b, 3.0, torch.ones(2))

"""Every loss term in a method's total reaches a trained parameter, or the method reports it as inert.

"Reaches" means a non-zero gradient on a parameter that retrieval uses (the text/visual embeddings, the ITM
re-ranker when ``ccrk.k_test > 0``) or on a teacher another term reads (CL2CM's cross-lingual sentence head,
the teacher of the relational distillation). A parameter that only its own term trains (NRCCR's
discriminator, CL2CM's word projection) does not count. A term that cannot act must be listed by
``Method.inert_terms()`` (and warned about at construction); a listed term must really be inert.
"""
import pytest
import torch

from ccr_fast.config import ConfigError, load_config
from ccr_fast.methods import build_method
from ccr_fast.methods._tiny import TINY, tiny_items

FROZEN = {"model.trainable_layers": [], "model.cache_text_states": False}
# a margin above the cosine range keeps every hinge active, so a zero gradient means "cannot reach", not "satisfied"
NR = {"nrccr.margin": 2.5}
TEACHERS = {"cl2cm": ("cl_sent.", "cl_text.")}  # the CL network, read (detached) by the kt teacher
CCRK_DEFAULT = {"model.embed_dim": 32, "model.visual_hidden": 32, "model.visual_encoder": "linear",
                "ccrk.text_proj": "identity", "ccrk.vision_proj": "identity", "ccrk.id_aware": True,
                "ccrk.w_itm": 0.0, "ccrk.w_mlm": 0.0, "ccrk.k_test": 0}

CASES = [
    ("baseline", {}, set()),
    ("baseline", {"baseline.loss": "triplet", "baseline.margin": 2.5}, set()),
    ("baseline", FROZEN, set()),
    ("nrccr", NR, set()),
    ("nrccr", {**NR, **FROZEN}, {"adv"}),
    ("nrccr", {**NR, **FROZEN, "model.train_top_layers": 1}, set()),
    ("cl2cm", {}, set()),
    ("cl2cm", FROZEN, {"word"}),
    ("cl2cm", {**FROZEN, "model.train_top_layers": 1}, set()),
    ("cl2cm", {"cl2cm.share_text_encoder": False}, set()),
    ("ccrk", {}, set()),
    ("ccrk", {"ccrk.mode": "finetune"}, set()),
    ("ccrk", {"ccrk.one_to_one": True}, set()),
    ("ccrk", FROZEN, set()),
    ("ccrk", CCRK_DEFAULT, set()),
]


def _build(name, kw):
    torch.manual_seed(0)
    return build_method(load_config(None, method=name, **{**TINY, **kw}))


def _retrieval_params(m, batch, name):
    """Names of trainable parameters the retrieval scores depend on (non-zero gradient of a random probe)."""
    params = dict((n, p) for n, p in m.named_parameters() if p.requires_grad)
    tok = batch["texts"] if "texts" in batch else batch.get("src", batch.get("text"))
    t = m.embed_text(tok)
    v = m.embed_visual(batch["visual"], batch.get("visual_mask"))
    g = torch.Generator().manual_seed(1)
    probe = (t * torch.randn(t.shape, generator=g)).sum() + (v * torch.randn(v.shape, generator=g)).sum()
    grads = torch.autograd.grad(probe, list(params.values()), allow_unused=True)
    used = {n for (n, _), gr in zip(params.items(), grads) if gr is not None and gr.abs().max() > 0}
    extra = TEACHERS.get(name, ())
    if name == "ccrk" and m.cfg.ccrk.k_test > 0:
        extra = extra + ("fusion.", "itm_head.")
    used |= {n for n in params if n.startswith(extra)} if extra else set()
    return used


@pytest.mark.parametrize("name,kw,inert", CASES)
def test_every_loss_term_acts_or_is_reported_inert(name, kw, inert):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = _build(name, kw)
    assert set(m.inert_terms()) == inert
    if inert:  # never silently zero: the method warns, naming every inert term
        text = " ".join(str(w.message) for w in caught)
        assert all(t in text for t in inert), text
    batch = m.collate(tiny_items(8))
    used = _retrieval_params(m, batch, name)
    assert used, "no trainable parameter reaches the retrieval embeddings"
    params = dict((n, p) for n, p in m.named_parameters() if p.requires_grad)
    losses = m.loss_dict(batch)
    weights = {k: v for k, v in losses.items() if k != "total"}
    assert weights, "the method reports no loss terms"
    for term, value in weights.items():
        grads = torch.autograd.grad(value, list(params.values()), allow_unused=True, retain_graph=True)
        acting = sorted(n for (n, _), gr in zip(params.items(), grads)
                        if n in used and gr is not None and gr.abs().max() > 0)
        if term in inert:
            assert not acting, f"{name}: {term} is reported inert but moves {acting[:3]}"
        else:
            assert acting, f"{name} {kw}: loss term {term!r} reaches no trained parameter"


def test_train_top_layers_unfreezes_exactly_the_top_layers():
    m = _build("nrccr", {**FROZEN, "model.train_top_layers": 1})  # tiny encoder: 2 layers
    enc = m.text.encoder
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in "." + n for n in trainable), sorted(trainable)[:4]
    assert not any(".layer.0." in "." + n for n in trainable)
    assert not m.text.frozen()


def test_train_top_layers_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="train_top_layers"):
        _build("nrccr", {**FROZEN, "model.train_top_layers": 3})

"""The bounded text-state cache: LRU within a byte budget, identical states, and the loop's on/off policy."""
import torch

from ccr_fast.config import load_config
from ccr_fast.methods import build_method
from ccr_fast.methods._tiny import TINY, tiny_items
from ccr_fast.models.text import TextBackbone, freeze_encoder, tiny_text_encoder
from ccr_fast.training import state_cache as sc


def _entry(n_tokens, hidden=4):
    key = tuple(range(1000, 1000 + n_tokens))
    return key, torch.zeros(n_tokens, hidden)


def test_lru_eviction_within_budget(monkeypatch):
    monkeypatch.setattr(sc, "KEEP_RECENT", 2)
    one = sc.entry_bytes(*_entry(5))
    cache = sc.StateCache(3 * one)
    keys = [tuple(range(i, i + 5)) for i in range(0, 50, 5)]
    for k in keys[:3]:
        cache[k] = torch.zeros(5, 4)
    assert keys[0] in cache  # a hit makes keys[0] the most recently used
    cache[keys[3]] = torch.zeros(5, 4)  # over budget: the least recently used (keys[1]) goes
    assert list(cache) == [keys[2], keys[0], keys[3]]
    assert cache.nbytes == 3 * one and cache.evicted == 1
    for k in keys[4:]:
        cache[k] = torch.zeros(5, 4)
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    # the newest KEEP_RECENT entries stay even when they alone exceed the budget (a batch is read back after storing)
    small = sc.StateCache(one // 2)
    small[keys[0]] = torch.zeros(5, 4)
    small[keys[1]] = torch.zeros(5, 4)
    assert len(small) == 2
    small[keys[2]] = torch.zeros(5, 4)
    assert list(small) == [keys[1], keys[2]]
    del small[keys[1]]
    small.clear()
    assert small.nbytes == 0 and len(small) == 0


def test_backbone_with_bounded_cache_matches_uncached(monkeypatch):
    """Many distinct captions through a frozen encoder with a tiny budget: states equal the encoder's, the cache
    stays within its budget (plus the protected newest entries)."""
    monkeypatch.setattr(sc, "KEEP_RECENT", 4)
    torch.manual_seed(0)
    enc = tiny_text_encoder(60, hidden=8, layers=1, heads=2).eval()
    freeze_encoder(enc, [])
    bb = TextBackbone(enc, cache=True)
    bb._cache = sc.StateCache(sc.entry_bytes(*_entry(6, 8)) * 5)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        ids = torch.randint(5, 60, (4, 6), generator=g)
        ids[:, 0] = 0
        mask = torch.ones_like(ids)
        mask[step % 4, 4:] = 0
        ref = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        out = bb(ids, mask)
        for i, n in enumerate(mask.sum(1).tolist()):
            torch.testing.assert_close(out[i, :n], ref[i, :n], atol=1e-5, rtol=1e-5)
        assert len(bb._cache) <= 5 + 4 and bb._cache.nbytes <= max(bb._cache.max_bytes,
                                                                  4 * sc.entry_bytes(*_entry(6, 8)))
    assert bb._cache.evicted > 0


def _method(**kw):
    cfg = load_config(None, **{**TINY, "method": "nrccr", "model.trainable_layers": [],
                               "model.cache_text_states": True, **kw})
    return build_method(cfg), cfg


def test_install_switches_off_when_the_training_texts_do_not_fit():
    method, cfg = _method()
    items = tiny_items(16)
    need = sc.estimate_text_state_bytes(items, method.tokenize, 32)
    assert need > 16 * 3 * 4 * 32 * 4  # 16 items x 3 texts x >= 4 tokens x H=32 float32
    budget, note = sc.install_state_cache(method, cfg, items, budget=need * 2)
    caches = [m._cache for m in method.modules() if isinstance(m, TextBackbone)]
    assert caches and all(isinstance(c, sc.StateCache) and c.max_bytes == need * 2 for c in caches)
    assert all(m.use_cache for m in method.modules() if isinstance(m, TextBackbone)), note
    method2, cfg2 = _method()
    _, note = sc.install_state_cache(method2, cfg2, items, budget=need // 2)
    assert "cache off" in note
    assert not any(m.use_cache for m in method2.modules() if isinstance(m, TextBackbone))


def test_install_leaves_trainable_encoders_alone():
    method, cfg = _method(**{"model.trainable_layers": None})
    _, note = sc.install_state_cache(method, cfg, tiny_items(4), budget=1 << 20)
    assert note == "no cached text encoder"

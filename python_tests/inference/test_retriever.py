"""ccr_fast.load → Retriever: search ranks exactly as evaluate (Recall@K from search == evaluate's R@K, both
directions), for a query-bank CCR^k model on synthetic data, the linear baseline, and the built-in default on the
shipped test split; bad input; the ``index`` / ``search`` command line."""
import json

import numpy as np
import pytest
import torch

import ccr_fast
from ccr_fast.methods._tiny import TINY
from ccr_fast.metrics import recall_at_k
from ccr_fast.training.loop import build_eval_sets

QB = {**TINY, "method": "ccrk", "data": {"name": "synthetic", "n_items": 60}, "languages": ["en", "de"],
      "model.visual_dim": None, "ccrk.k_test": 0, "ccrk.querybank": True, "ccrk.text_center": True,
      "model.visual_encoder": "norm_linear", "ccrk.text_proj": "linear", "ccrk.vision_proj": "linear",
      "batch_size": 8, "epochs": 1}


def search_recalls(r, es, k=10):
    """t2v / v2t R@1/5/10 of one eval set, read from Retriever.search lists (ids are the gallery's visual ids)."""
    ids = [str(v) for v in es.item_ids]
    ix = r.build_index(es.gallery, ids=ids)
    hits = r.search(list(es.queries), ix, k=k, lang=es.lang)
    t2v = [next((p for p, (i, _) in enumerate(h) if i == ids[t]), k) for h, t in zip(hits, es.query_item)]
    qi = np.asarray(es.query_item)
    tix = r.build_text_index(list(es.queries), lang=es.lang)  # ids "0".."Q-1"
    items = np.unique(qi)  # v2t is over the items that have captions
    vhits = r.search(np.asarray(es.gallery)[items], tix, k=k)
    v2t = [next((p for p, (i, _) in enumerate(h) if qi[int(i)] == g), k) for h, g in zip(vhits, items)]
    out = {}
    for prefix, ranks in (("t2v", t2v), ("v2t", v2t)):
        for kk, v in recall_at_k(np.asarray(ranks), (1, 5, 10)).items():
            out[f"{prefix}_r{kk}"] = v
    return out


def assert_search_equals_evaluate(checkpoint):
    metrics = ccr_fast.evaluate(checkpoint)
    r = ccr_fast.load(checkpoint, device="cpu")
    sets = build_eval_sets(r.config, r.method, r.config.eval.test_split)
    assert sets
    for es in sets:
        got = search_recalls(r, es)
        want = {key: metrics[es.lang][key] for key in got}
        assert got == want, (es.lang, got, want)  # to the last digit
    return metrics


@pytest.fixture(scope="module")
def qb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qb")
    return ccr_fast.train(**QB, output_dir=str(out))


def test_querybank_ccrk_search_equals_evaluate(qb_run):
    r = ccr_fast.load(qb_run.best_checkpoint, device="cpu")
    assert r.dim == r.method.encode_text(["x"]).shape[1] + 2  # the index holds the query-bank augmented rows
    assert_search_equals_evaluate(qb_run.best_checkpoint)


def test_linear_querybank_search_equals_evaluate(tmp_path):
    over = {**TINY, "method": "linear", "data": {"name": "synthetic", "n_items": 60}, "languages": ["en", "de"],
            "model.visual_dim": None, "model.trainable_layers": [], "linear.querybank": True,
            "output_dir": str(tmp_path)}
    res = ccr_fast.train(**over)
    assert_search_equals_evaluate(res.best_checkpoint)


def test_nrccr_translate_test_fusion_search_equals_evaluate(tmp_path):
    """NRCCR ranks target-language queries by translate-test fusion with their English MT: search with
    ``queries_mt`` gives evaluate's fused t2v R@K, and without it the direct ("direct") R@K."""
    over = {**TINY, "method": "nrccr", "data": {"name": "synthetic", "n_items": 40}, "languages": ["en", "de"],
            "model.visual_dim": None, "batch_size": 4, "epochs": 1, "nrccr.fusion_weight": 0.6,
            "output_dir": str(tmp_path)}
    res = ccr_fast.train(**over)
    metrics = ccr_fast.evaluate(res.best_checkpoint)
    assert "direct" in metrics and metrics["fusion_weight"] == 0.6
    assert metrics["de"] != metrics["direct"]["de"]  # the fused ranking is another ranking
    r = ccr_fast.load(res.best_checkpoint, device="cpu")
    (es,) = build_eval_sets(r.config, r.method, "test")
    assert es.queries_mt is not None
    ids = [str(v) for v in es.item_ids]
    ix = r.build_index(es.gallery, ids=ids)
    for mt, want in ((list(es.queries_mt), metrics[es.lang]), (None, metrics["direct"][es.lang])):
        hits = r.search(list(es.queries), ix, k=10, queries_mt=mt)
        ranks = [next((p for p, (i, _) in enumerate(h) if i == ids[t]), 10) for h, t in zip(hits, es.query_item)]
        got = recall_at_k(np.asarray(ranks), (1, 5, 10))
        assert [got[1], got[5], got[10]] == [want["t2v_r1"], want["t2v_r5"], want["t2v_r10"]], (mt is None, got)
    with pytest.raises(ValueError, match="queries_mt"):
        r.search(list(es.queries), ix, queries_mt=list(es.queries_mt)[:-1])


def test_encoders_and_index_contents(qb_run):
    r = ccr_fast.load(qb_run.best_checkpoint, device="cpu")
    es = build_eval_sets(r.config, r.method, "test")[0]
    t = r.encode_text(list(es.queries)[:5], lang=es.lang)
    v = r.encode_images(es.gallery)
    assert t.dtype == torch.float32 and v.shape[0] == len(es.gallery)
    torch.testing.assert_close(t.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(v.shape[0]))
    torch.testing.assert_close(t, r.method.encode_text(list(es.queries)[:5]))
    ix = r.build_index(es.gallery)
    assert ix.ids == [str(i) for i in range(len(es.gallery))] and ix.fingerprint == r.fingerprint
    one = r.search(es.queries[0], ix, k=3)  # a single string
    assert len(one) == 1 and len(one[0]) == 3 and one[0][0][1] >= one[0][1][1] >= one[0][2][1]
    assert r.search([], ix) == []
    assert r.encode_text([]).shape[0] == 0
    # query embeddings of the index width are taken as ranking embeddings
    q = r.index_embeddings(list(es.queries)[:4], "text")
    assert r.search(q, ix, k=5) == r.search(list(es.queries)[:4], ix, k=5)


def test_saved_index_searches_the_same_and_rejects_another_model(qb_run, tmp_path):
    r = ccr_fast.load(qb_run.best_checkpoint, device="cpu")
    es = build_eval_sets(r.config, r.method, "test")[0]
    ix = r.build_index(es.gallery, ids=[f"v{i}" for i in range(len(es.gallery))])
    ix.save(tmp_path / "ix")
    loaded = ccr_fast.Index.load(tmp_path / "ix", mmap=True, block_rows=7)
    qs = list(es.queries)[:6]
    assert r.search(qs, loaded, k=4) == r.search(qs, ix, k=4)
    other = ccr_fast.train(**{**QB, "seed": 1}, output_dir=str(tmp_path / "other"))
    r2 = ccr_fast.load(other.best_checkpoint, device="cpu")
    assert r2.fingerprint != r.fingerprint
    with pytest.raises(ValueError, match="another model"):
        r2.search(qs, loaded)


def test_bad_input(qb_run):
    r = ccr_fast.load(qb_run.best_checkpoint, device="cpu")
    es = build_eval_sets(r.config, r.method, "test")[0]
    with pytest.raises(ValueError, match="ids"):
        r.build_index(es.gallery, ids=["a", "b"])
    with pytest.raises(ValueError, match="images"):
        r.build_index(np.zeros((3, 5), dtype=np.float32))  # wrong feature width
    with pytest.raises(ValueError, match="index"):
        r.search(["a dog"], ccr_fast.Index(r.dim + 1))
    ix = r.build_index(es.gallery)
    with pytest.raises(ValueError, match="k"):
        r.search(["a dog"], ix, k=0)
    with pytest.raises(TypeError, match="queries"):
        r.search([1, 2], ix)
    with pytest.raises(ValueError, match="feature arrays"):
        r.encode_images(["missing.jpg"])  # a feature-trained model takes no image files
    with pytest.raises(ValueError, match="checkpoint"):
        ccr_fast.load(qb_run.run_dir + "/nope")
    with pytest.raises(ValueError, match="queries_mt"):  # CCR^k defines no translate-test fusion
        r.search(["a dog"], ix, queries_mt=["a dog"])


def test_cli_index_and_search_round_trip(qb_run, tmp_path, capsys):
    from ccr_fast.cli import main

    r = ccr_fast.load(qb_run.best_checkpoint, device="cpu")
    es = build_eval_sets(r.config, r.method, "test")[0]
    feats = tmp_path / "gallery.npy"
    np.save(feats, np.asarray(es.gallery, dtype=np.float32))
    ids = [f"img_{i:03d}" for i in range(len(es.gallery))]
    (tmp_path / "gallery.ids.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "ix"
    assert main(["index", qb_run.best_checkpoint, "--features", str(feats), "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["count"] == len(ids) and summary["fingerprint"] == r.fingerprint
    assert ccr_fast.Index.load(out).ids == ids

    qfile = tmp_path / "q.txt"
    qfile.write_text(es.queries[1] + "\n\n" + es.queries[2] + "\n")
    assert main(["search", str(out), es.queries[0], "--k", "3", "--lang", es.lang, "--queries", str(qfile)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 9 and [x["rank"] for x in lines[:3]] == [1, 2, 3]
    want = r.search(list(es.queries[:3]), r.build_index(es.gallery, ids=ids), k=3)
    assert [(x["id"], x["score"]) for x in lines] == [hit for row in want for hit in row]
    assert [x["query"] for x in lines[::3]] == list(es.queries[:3])

    # appending the same gallery again doubles the index; another --out without --append is refused
    assert main(["index", qb_run.best_checkpoint, "--features", str(feats), "--out", str(out), "--append",
                 "--no-progress"]) == 0
    assert len(ccr_fast.Index.load(out)) == 2 * len(ids)
    capsys.readouterr()
    for argv in (["index", qb_run.best_checkpoint, "--features", str(feats), "--out", str(out)],
                 ["search", str(tmp_path / "nothing"), "a dog"],
                 ["search", str(out), "a dog", "--k", "0"],
                 ["search", str(out)],
                 ["index", qb_run.best_checkpoint, "--features", str(tmp_path / "none.npy"), "--out",
                  str(tmp_path / "ix2")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (argv, err)
    for argv in (["index", qb_run.best_checkpoint, "--out", str(tmp_path / "ix3")],  # neither --features nor --images
                 ["search", str(out), "a dog", "--k", "many"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.startswith("error: ") and "\n" not in err, (argv, err)


def test_default_checkpoint_search_equals_evaluate_on_the_shipped_test_split(tmp_path):
    """The built-in default (shortened: one optimiser step) on the shipped data; its query-bank ranking through
    search gives evaluate's R@1/5/10 in both directions for every language."""
    from ccr_fast.data.shipped import shipped_data_dir

    try:
        shipped_data_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    res = ccr_fast.train(max_steps=1, epochs=1, progress=False, device="cpu", output_dir=str(tmp_path))
    r = ccr_fast.load(res.best_checkpoint, device="cpu")
    assert r.config.method == "ccrk" and r.config.ccrk.querybank
    metrics = assert_search_equals_evaluate(res.best_checkpoint)
    assert metrics["languages"] == ["en", "de", "fr", "cs"]

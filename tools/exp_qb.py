"""Experiment: query-bank normalisation (inverted softmax over a bank of TRAINING queries) at ranking time, for the
ridge map and the contrastive recipe, beta picked on validation. Prints val/test mean SumR plain and normalised."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import exp_recipes as E  # noqa: E402


def sumr_scores(s):
    """s [Q, G] with query i's target at column i: t2v ranks per row, v2t ranks per column."""
    d = s.diag()
    out = 0.0
    for r in ((s > d.unsqueeze(1)).sum(1), (s > d.unsqueeze(0)).sum(0)):
        for k in (1, 5, 10):
            out += 100.0 * (r < k).float().mean().item()
    return out


def qb_eval(enc_t, enc_v, emb, feats, idx, bank_t, bank_v, beta):
    v = enc_v(feats[idx]).float()
    res = {}
    for lang in E.LANGS:
        t = enc_t(emb[f"t1_{lang}"][idx, 0]).float()
        s = t @ v.t()  # [Q, G]
        if beta:
            # t2v: normalise each image by its softmax mass over the training captions; v2t: each caption by its
            # mass over the training images
            st = s - torch.logsumexp(beta * (bank_t @ v.t()), 0, keepdim=True) / beta
            sv = s - torch.logsumexp(beta * (t @ bank_v.t()), 1, keepdim=True) / beta
            d1, d2 = st.diag().unsqueeze(1), sv.diag().unsqueeze(0)
            out = 0.0
            for r in ((st > d1).sum(1), (sv > d2).sum(0)):
                for k in (1, 5, 10):
                    out += 100.0 * (r < k).float().mean().item()
            res[lang] = out
        else:
            res[lang] = sumr_scores(s)
    res["mean"] = sum(res[l] for l in E.LANGS) / 4
    return res


def main():
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--log", default="", help="append one JSON record per (model, beta) to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    c, feats, emb, text = E.load(ROOT / "runs/exp/text_cache.pt")
    feats = feats.float()
    tr, va, te = c["split"]["train"], c["split"]["val"], c["split"]["test"]
    pool = E.train_pool(c, emb, text, tr, "all")
    bank_raw = torch.cat([g[l] for g in pool for l in E.LANGS])
    betas = [0, 10, 20, 30, 50]
    # ridge (all captions, centred targets, lambda = 3 as selected)
    xs, ys = [], []
    for i, g in zip(tr.tolist(), pool):
        for l in E.LANGS:
            for e in g[l]:
                xs.append(feats[i]); ys.append(e)
    X = torch.stack(xs).double(); Y = F.normalize(torch.stack(ys).double(), dim=-1)
    tmean = Y.mean(0); Y = F.normalize(Y - tmean, dim=-1)
    mu = X.mean(0); Xc = X - mu
    A = Xc.t() @ Xc
    s = torch.linalg.eigvalsh(A).clamp_min(0).mean()
    W = torch.linalg.solve(A + 3.0 * s * torch.eye(A.shape[0], dtype=A.dtype), Xc.t() @ Y)
    b = Y.mean(0)
    enc_t = lambda h: F.normalize(F.normalize(h.double(), dim=-1) - tmean, dim=-1)
    enc_v = lambda x: F.normalize((x.double() - mu) @ W + b, dim=-1)
    rows = {}
    bt, bv = enc_t(bank_raw).float(), enc_v(feats[tr]).float()
    rows["ridge: all captions, centred e5, λ=3"] = [(beta, qb_eval(enc_t, enc_v, emb, feats, va, bt, bv, beta)["mean"],
                      qb_eval(enc_t, enc_v, emb, feats, te, bt, bv, beta)) for beta in betas]
    # contrastive recipe
    fs = E.preprocess(feats, tr, "std")
    tm = F.normalize(bank_raw, dim=-1).mean(0)
    m = E.Model(2048, 384, 384, "linear", 1024, "identity", 0.05, True, tm, True, 0.3)
    (bvv, be, btt), hist, total = E.contrastive(m, c, fs, emb, text, "all", 20, 350, 2e-3, 0.01, "allpos", 0)
    m.eval()
    with torch.no_grad():
        bt, bv = m.enc_t(bank_raw), m.enc_v(fs[tr])
        rows["contrastive: centred e5, standardised features, dropout 0.3, 20 epochs (last)"] = [(beta, qb_eval(m.enc_t, m.enc_v, emb, fs, va, bt, bv, beta)["mean"],
                                            qb_eval(m.enc_t, m.enc_v, emb, fs, te, bt, bv, beta)) for beta in betas]
    for k, rs in rows.items():
        for beta, v, t in rs:
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps({"what": "querybank", "model": k, "beta": beta, "val_mean_sumr": v,
                                        "test": t}) + "\n")
            print(f"{k[:24]:24s} beta={beta:3d} val {v:.1f} test {t['mean']:.1f} " + " ".join(f"{l}={t[l]:.1f}" for l in E.LANGS))


if __name__ == "__main__":
    main()

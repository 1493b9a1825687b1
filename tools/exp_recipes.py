"""Experiment harness for choosing the default recipe on VALIDATION: pooled frozen-e5 caption embeddings
(``tools/exp_cache_text.py``) + ResNet-50 features, tiny heads trained in seconds.

Mirrors the package's CCR^k model on cached pooled text: text side ``normalize(P_t h)`` (P_t Linear 384→d,
or identity), visual side ``normalize(P_v f(x))`` (f: linear or ReLU-MLP), 1-to-K InfoNCE with a learnable or
fixed temperature. Prints val/test mean SumR over en/de/fr/cs (task 1 captions, 100/200 images).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "fr", "cs"]


def load(path):
    c = torch.load(path, weights_only=False)
    feats = c["feats"]
    emb = c["emb"]
    text = c["text"]
    return c, feats, emb, text


def sumr_one(t, v):
    """SumR for one caption per item: t [N, d], v [N, d] (normalised)."""
    s = t @ v.t()
    n = s.shape[0]
    d = s.diag().unsqueeze(1)
    r_t2v = (s > d).sum(1)
    r_v2t = (s.t() > d).sum(1)
    out = 0.0
    for r in (r_t2v, r_v2t):
        for k in (1, 5, 10):
            out += 100.0 * (r < k).float().mean().item()
    return out


def preprocess(feats, tr, how):
    """Visual feature preprocessing with train-split statistics: none | center | std | sqrt_std."""
    if how == "none":
        return feats
    x = feats.sqrt() if how.startswith("sqrt") else feats
    mu = x[tr].mean(0)
    x = x - mu
    if how.endswith("std"):
        x = x / x[tr].std(0).clamp_min(1e-6)
    return x


def evaluate(enc_t, enc_v, emb, feats, idx):
    res = {}
    v = enc_v(feats[idx])
    for lang in LANGS:
        res[lang] = sumr_one(enc_t(emb[f"t1_{lang}"][idx, 0]), v)
    res["mean"] = sum(res[l] for l in LANGS) / 4
    return res


def train_pool(c, emb, text, tr, mode):
    """Per training image: list of (lang, embedding) of every caption used ("task1" or "all")."""
    groups = []
    for i in tr.tolist():
        g = {l: [emb[f"t1_{l}"][i, 0]] for l in LANGS}
        if mode == "all":
            en1 = text["t1_en"][i][0].strip()
            g["en"] += [emb["t2_en"][i, k] for k in range(5) if text["t2_en"][i][k].strip() != en1]
            g["de"] += [emb["t2_de"][i, k] for k in range(5)]
        groups.append({l: torch.stack(v) for l, v in g.items()})
    return groups


def ridge(c, feats, emb, text, mode="all", center=True, lambdas=(0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30)):
    tr, va, te = c["split"]["train"], c["split"]["val"], c["split"]["test"]
    groups = train_pool(c, emb, text, tr, mode)
    xs, ys = [], []
    for i, g in zip(tr.tolist(), groups):
        for l in LANGS:
            for e in g[l]:
                xs.append(feats[i]); ys.append(e)
    X = torch.stack(xs).double(); Y = F.normalize(torch.stack(ys).double(), dim=-1)
    tmean = Y.mean(0)
    if center:
        Y = F.normalize(Y - tmean, dim=-1)
    mu = X.mean(0); Xc = X - mu
    ev, Q = torch.linalg.eigh(Xc.t() @ Xc)
    P = Q.t() @ (Xc.t() @ Y); s = ev.clamp_min(0).mean()
    b = Y.mean(0)

    def enc_t(h):
        h = F.normalize(h.double(), dim=-1)
        return F.normalize(h - tmean, dim=-1) if center else h

    out = []
    for lam in lambdas:
        W = Q @ (P / (ev.clamp_min(0) + lam * s).unsqueeze(1))
        enc_v = lambda x: F.normalize((x.double() - mu) @ W + b, dim=-1)
        out.append((lam, evaluate(enc_t, enc_v, emb, feats, va), evaluate(enc_t, enc_v, emb, feats, te)))
    return out


class Res(nn.Module):
    def __init__(self, dv, d, hidden, drop):
        super().__init__()
        self.drop = nn.Dropout(drop)
        self.lin = nn.Linear(dv, d)
        self.mlp = nn.Sequential(nn.Linear(dv, hidden), nn.ReLU(), nn.Dropout(drop), nn.Linear(hidden, d))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):
        x = self.drop(x)
        return self.lin(x) + self.mlp(x)


class Model(nn.Module):
    def __init__(self, dv, dt, d, vis="linear", hidden=1024, text_head="linear", temp=0.05, learn_temp=True,
                 tmean=None, center=False, drop=0.0):
        super().__init__()
        if vis == "linear":
            self.vis = nn.Sequential(nn.Dropout(drop), nn.Linear(dv, d))
        elif vis == "res":  # linear map plus a zero-initialised ReLU-MLP residual
            self.vis = Res(dv, d, hidden, drop)
        elif vis == "linear2":
            self.vis = nn.Sequential(nn.Linear(dv, hidden), nn.Linear(hidden, d))
        else:
            self.vis = nn.Sequential(nn.Dropout(drop), nn.Linear(dv, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.text_head = text_head
        if text_head == "linear":
            self.tp = nn.Linear(dt, d)
        elif text_head == "identity_init":
            self.tp = nn.Linear(dt, d)
            with torch.no_grad():
                self.tp.weight.copy_(torch.eye(d, dt)); self.tp.bias.zero_()
        self.logt = nn.Parameter(torch.tensor(math.log(temp)), requires_grad=learn_temp)
        self.register_buffer("tmean", tmean if tmean is not None else torch.zeros(dt))
        self.center = center

    def enc_t(self, h):
        h = F.normalize(h, dim=-1)
        if self.center:
            h = h - self.tmean
        if self.text_head in ("linear", "identity_init"):
            h = self.tp(h)
        return F.normalize(h, dim=-1)

    def enc_v(self, x):
        return F.normalize(self.vis(x), dim=-1)


def contrastive(m, c, feats, emb, text, mode="all", epochs=30, bs=64, lr=1e-3, wd=0.01, loss="1toK", seed=0,
                log=False, **kw):
    torch.manual_seed(seed)
    tr, va, te = c["split"]["train"], c["split"]["val"], c["split"]["test"]
    groups = train_pool(c, emb, text, tr, mode)
    X = feats[tr]
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    n = len(tr)
    steps_per = n // bs
    total = epochs * steps_per
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, int(0.05 * total))) *
                                              0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    best = (-1, None, None)
    hist = []
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        m.train()
        perm = torch.randperm(n, generator=g)
        for s in range(steps_per):
            idx = perm[s * bs:(s + 1) * bs]
            if loss == "allpos":  # every caption of every image in the batch is a positive of its image
                v = m.enc_v(X[idx])
                caps = [torch.cat([groups[i][l] for l in LANGS]) for i in idx.tolist()]
                owner = torch.cat([torch.full((len(cc),), j) for j, cc in enumerate(caps)])
                t = m.enc_t(torch.cat(caps))
                logits = v @ t.t() / m.logt.exp()
                pos = (owner.unsqueeze(0) == torch.arange(len(idx)).unsqueeze(1)).float()
                l_i2t = -((pos / pos.sum(1, keepdim=True)) * logits.log_softmax(1)).sum(1).mean()
                l_t2i = F.cross_entropy(logits.t(), owner)
                L = 0.5 * (l_i2t + l_t2i)
                if kw.get("hn", 0):  # VSE++ max-violation triplet on cosines, margin kw["margin"]
                    cos = v @ t.t()
                    pc = (cos * pos).sum(1) / pos.sum(1)  # mean positive cosine per image
                    neg_i = cos.masked_fill(pos.bool(), -2).max(1).values
                    cos_t = cos.t()
                    own = cos_t.gather(1, owner.unsqueeze(1)).squeeze(1)
                    neg_t = cos_t.masked_fill(pos.t().bool(), -2).max(1).values
                    mg = kw.get("margin", 0.2)
                    L = L + kw["hn"] * ((mg + neg_i - pc).clamp_min(0).mean() + (mg + neg_t - own).clamp_min(0).mean())
                opt.zero_grad(); L.backward(); opt.step(); sched.step()
                with torch.no_grad():
                    m.logt.clamp_(math.log(0.001), math.log(0.5))
                continue
            # one caption per language per image, drawn from all captions of that language
            T = torch.stack([torch.stack([groups[i][l][torch.randint(len(groups[i][l]), (1,), generator=g)].squeeze(0)
                                          for l in LANGS]) for i in idx.tolist()])  # [B, K, dt]
            v = m.enc_v(X[idx])
            t = m.enc_t(T.view(-1, T.shape[-1])).view(len(idx), len(LANGS), -1)
            scale = 1.0 / m.logt.exp()
            if loss == "1toK":
                B, K = t.shape[:2]
                logits = v @ t.reshape(B * K, -1).t() * scale  # [B, BK]
                tgt = torch.zeros_like(logits); tgt.view(B, B, K)[torch.arange(B), torch.arange(B)] = 1.0 / K
                l_i2t = -(tgt * logits.log_softmax(1)).sum(1).mean()
                lt = logits.t()  # [BK, B]
                l_t2i = F.cross_entropy(lt, torch.arange(B).repeat_interleave(K))
                L = 0.5 * (l_i2t + l_t2i)
            else:  # per-language CLIP averaged
                L = 0
                for k in range(t.shape[1]):
                    lg = v @ t[:, k].t() * scale
                    y = torch.arange(len(idx))
                    L = L + 0.5 * (F.cross_entropy(lg, y) + F.cross_entropy(lg.t(), y))
                L = L / t.shape[1]
            opt.zero_grad(); L.backward(); opt.step(); sched.step()
            with torch.no_grad():
                m.logt.clamp_(math.log(0.001), math.log(0.5))
        m.eval()
        with torch.no_grad():
            r = evaluate(m.enc_t, m.enc_v, emb, feats, va)
        hist.append(round(r["mean"], 1))
        if r["mean"] > best[0]:
            with torch.no_grad():
                rt = evaluate(m.enc_t, m.enc_v, emb, feats, te)
            best = (r["mean"], ep + 1, rt)
    return best, hist, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default=str(ROOT / "runs/exp/text_cache.pt"))
    ap.add_argument("--what", default="ridge")
    ap.add_argument("--grid", default="{}")
    ap.add_argument("--log", default="", help="append one JSON record per configuration to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    c, feats, emb, text = load(args.cache)
    feats = feats.float()
    if args.what == "ridge":
        for mode in ("task1", "all"):
            for center in (False, True):
                res = ridge(c, feats, emb, text, mode, center)
                bl, bv, bt = max(res, key=lambda r: r[1]["mean"])
                if args.log:
                    with open(args.log, "a") as f:
                        f.write(json.dumps({"what": "ridge", "mode": mode, "center": center, "lambda": bl,
                                            "val_mean_sumr": bv["mean"], "test": bt,
                                            "val_by_lambda": {f"{l:g}": v["mean"] for l, v, _ in res}}) + "\n")
                print(f"ridge mode={mode} center={center}: " +
                      " ".join(f"{l:g}:{v['mean']:.1f}" for l, v, _ in res) +
                      f" | best λ {bl:g} val {bv['mean']:.1f} test {bt['mean']:.1f} " +
                      " ".join(f"{k}={bt[k]:.1f}" for k in LANGS), flush=True)
        return
    grid = json.loads(args.grid)
    feats_raw = feats
    base = dict(vis_pre="none", hn=0.0, margin=0.2, mode="all", epochs=30, bs=64, lr=1e-3, wd=0.01, loss="1toK", vis="linear", text_head="linear",
                d=256, temp=0.05, learn_temp=True, center=False, hidden=1024, drop=0.0, seed=0)
    keys = list(grid)
    import itertools
    for vals in itertools.product(*[grid[k] for k in keys]):
        cfg = dict(base, **dict(zip(keys, vals)))
        feats = preprocess(feats_raw, c["split"]["train"], cfg["vis_pre"])
        tmean = None
        tr = c["split"]["train"]
        pool = train_pool(c, emb, text, tr, cfg["mode"])
        tmean = F.normalize(torch.cat([g[l] for g in pool for l in LANGS]), dim=-1).mean(0)
        d = 384 if cfg["text_head"] == "identity" else cfg["d"]
        m = Model(2048, 384, d, cfg["vis"], cfg["hidden"], cfg["text_head"], cfg["temp"], cfg["learn_temp"], tmean,
                  cfg["center"], cfg["drop"])
        t0 = time.time()
        (bv, be, bt), hist, total = contrastive(m, c, feats, emb, text, cfg["mode"], cfg["epochs"], cfg["bs"],
                                                cfg["lr"], cfg["wd"], cfg["loss"], cfg["seed"],
                                                hn=cfg["hn"], margin=cfg["margin"])
        if args.log:
            with open(args.log, "a") as f:
                f.write(json.dumps({"what": "contrastive", "config": cfg, "val_mean_sumr": bv, "best_epoch": be,
                                    "test": bt, "steps": total, "val_history": hist}) + "\n")
        print(json.dumps({k: cfg[k] for k in keys}), f"val {bv:.1f} @ep{be} test {bt['mean']:.1f} "
              + " ".join(f"{k}={bt[k]:.1f}" for k in LANGS) + f" steps {total} {time.time() - t0:.0f}s hist {hist}",
              flush=True)


if __name__ == "__main__":
    main()

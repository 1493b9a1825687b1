"""Experiment: frozen or partly trained e5 text side (top n of layers 7-8, optional attention pooling) + a
standardised linear visual map, InfoNCE with every sampled caption of an image positive; val-selected epoch.
Uses the caches of tools/exp_cache_text.py (runs/exp/text_cache.pt) and tools/exp_finetune.py (states_l7.pt)."""
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import exp_recipes as E  # noqa: E402
from exp_finetune import pad  # noqa: E402
from ccr_fast.models.text import load_text_encoder  # noqa: E402

SPLIT = 7


class Text(nn.Module):
    def __init__(self, enc, start, n_train, pool):
        super().__init__()
        self.enc = enc
        self.layers = enc.encoder.layer[start:]
        for p in enc.parameters():
            p.requires_grad_(False)
        for layer in list(self.layers)[len(self.layers) - n_train:] if n_train else []:
            for p in layer.parameters():
                p.requires_grad_(True)
        self.n_train = n_train
        self.pool = pool
        d = enc.config.hidden_size
        self.q = nn.Parameter(torch.zeros(d)) if pool == "attn" else None
        self.register_buffer("tmean", torch.zeros(d))

    def forward(self, h, mask):
        if len(self.layers):
            m4 = self.enc._create_attention_masks(attention_mask=mask, encoder_attention_mask=None,
                                                  embedding_output=h, encoder_hidden_states=None, cache=None)[0]
        for i, layer in enumerate(self.layers):
            if i < len(self.layers) - self.n_train:
                with torch.no_grad():
                    h = layer(h, m4)
            else:
                h = layer(h, m4)
        m = mask.unsqueeze(-1).to(h.dtype)
        if self.q is not None:
            a = (h @ self.q / math.sqrt(h.shape[-1])).masked_fill(mask == 0, -1e9).softmax(1).unsqueeze(-1)
            p = (h * a).sum(1)
        else:
            p = (h * m).sum(1) / m.sum(1)
        return F.normalize(F.normalize(p, dim=-1) - self.tmean, dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=0, help="trained top layers (0..2)")
    ap.add_argument("--pool", default="mean")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--bs", type=int, default=350)
    ap.add_argument("--cpi", type=int, default=0, help="captions per image per step (0 = all)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--enc_lr", type=float, default=1e-4)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--drop", type=float, default=0.0)
    ap.add_argument("--temp", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c, feats, emb, text = E.load(ROOT / "runs/exp/text_cache.pt")
    tr, va, te = (c["split"][s] for s in ("train", "val", "test"))
    feats = E.preprocess(feats.float(), tr, "std")
    states = torch.load(ROOT / "runs/exp/states_l7.pt")
    enc = load_text_encoder(None).eval()
    n_layers = len(enc.encoder.layer)
    start = n_layers - max(args.n, 0) if args.n > 0 else n_layers
    if start > SPLIT:  # advance the cached states to the first trained layer once (no grad)
        adv = Text(enc, SPLIT, 0, "mean").layers[: start - SPLIT]
        keys = list(states)
        with torch.no_grad():
            for s in range(0, len(keys), 256):
                chunk = keys[s:s + 256]
                h, m = pad([states[k] for k in chunk])
                m4 = enc._create_attention_masks(attention_mask=m, encoder_attention_mask=None, embedding_output=h,
                                                 encoder_hidden_states=None, cache=None)[0]
                for layer in adv:
                    h = layer(h, m4)
                for j, k in enumerate(chunk):
                    states[k] = h[j, : int(m[j].sum())].clone()
    torch.manual_seed(args.seed)
    tm = Text(enc, start, args.n, args.pool)
    caps = []
    for i in tr.tolist():
        en1 = text["t1_en"][i][0].strip()
        g = [text[f"t1_{l}"][i][0] for l in E.LANGS]
        g += [t for t in text["t2_en"][i] if t.strip() != en1] + list(text["t2_de"][i])
        caps.append(g)
    with torch.no_grad():
        allc = [t for g in caps for t in g]
        outs = [tm(*pad([states[t] for t in allc[s:s + 512]])) for s in range(0, len(allc), 512)]
        tm.tmean.copy_(torch.cat(outs).mean(0))  # outputs were normalised with tmean = 0
    vis = nn.Sequential(nn.Dropout(args.drop), nn.Linear(2048, 384))
    logt = nn.Parameter(torch.tensor(math.log(args.temp)))
    enc_params = [p for p in tm.layers.parameters() if p.requires_grad]
    head = list(vis.parameters()) + [logt] + ([tm.q] if tm.q is not None else [])
    groups = [{"params": head, "lr": args.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": args.enc_lr})
    opt = torch.optim.AdamW(groups, weight_decay=args.wd)
    steps_per = len(tr) // args.bs
    total = steps_per * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, int(0.05 * total))) *
                                              0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    g = torch.Generator().manual_seed(args.seed)

    def evaluate(idx):
        tm.eval(); vis.eval()
        with torch.no_grad():
            v = F.normalize(vis(feats[idx]), dim=-1)
            r = {l: E.sumr_one(tm(*pad([states[text[f"t1_{l}"][i][0]] for i in idx.tolist()])), v)
                 for l in E.LANGS}
        r["mean"] = sum(r[l] for l in E.LANGS) / 4
        tm.train(); vis.train()
        return r

    best, hist, t0 = (-1, 0, None), [], time.time()
    for ep in range(args.epochs):
        perm = torch.randperm(len(tr), generator=g)
        for s in range(steps_per):
            bi = perm[s * args.bs:(s + 1) * args.bs].tolist()
            texts, owner = [], []
            for j, b in enumerate(bi):
                cs = caps[b]
                if args.cpi:
                    cs = [cs[int(k)] for k in torch.randperm(len(cs), generator=g)[: args.cpi]]
                texts += cs
                owner += [j] * len(cs)
            owner = torch.tensor(owner)
            t = tm(*pad([states[x] for x in texts]))
            v = F.normalize(vis(feats[tr[bi]]), dim=-1)
            logits = v @ t.t() / logt.exp()
            pos = (owner.unsqueeze(0) == torch.arange(len(bi)).unsqueeze(1)).float()
            loss = 0.5 * (-((pos / pos.sum(1, keepdim=True)) * logits.log_softmax(1)).sum(1).mean()
                          + F.cross_entropy(logits.t(), owner))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                logt.clamp_(math.log(0.005), math.log(0.5))
        r = evaluate(va)
        hist.append(round(r["mean"], 1))
        if r["mean"] > best[0]:
            best = (r["mean"], ep + 1, evaluate(te))
    bt = best[2]
    line = (json.dumps(vars(args)) + f" val {best[0]:.1f} @ep{best[1]} test {bt['mean']:.1f} "
            + " ".join(f"{k}={bt[k]:.1f}" for k in E.LANGS) + f" steps {total} {time.time() - t0:.0f}s hist {hist}")
    print(line, flush=True)
    if args.log:
        with open(args.log, "a") as f:
            f.write(json.dumps({"args": vars(args), "val": best[0], "epoch": best[1], "test": bt, "steps": total,
                                "hist": hist}) + "\n")


if __name__ == "__main__":
    main()

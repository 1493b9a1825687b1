"""Experiment: fine-tune the top n e5 layers (n<=2) on cached layer-7 token states + a linear visual map, 1-to-K
InfoNCE over all captions; val-selected epoch. Prints val/test mean SumR (en/de/fr/cs)."""
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
from ccr_fast.data.collate import tokenize  # noqa: E402
from ccr_fast.models.text import load_text_encoder, load_tokenizer  # noqa: E402

SPLIT = 7


def build_cache(c, text, path):
    tok = load_tokenizer(None)
    enc = load_text_encoder(None).eval()
    tr, va, te = (c["split"][s].tolist() for s in ("train", "val", "test"))
    want = {}
    for i in tr:
        en1 = text["t1_en"][i][0].strip()
        caps = {l: [text[f"t1_{l}"][i][0]] for l in E.LANGS}
        caps["en"] += [t for t in text["t2_en"][i] if t.strip() != en1]
        caps["de"] += list(text["t2_de"][i])
        for l in E.LANGS:
            for t in caps[l]:
                want[t] = None
    for i in va + te:
        for l in E.LANGS:
            want[text[f"t1_{l}"][i][0]] = None
    flat = sorted(want, key=len)
    states = {}
    t0 = time.time()
    with torch.no_grad():
        for s in range(0, len(flat), 128):
            chunk = flat[s:s + 128]
            t = tokenize(tok, chunk, 40, "query: ")
            hs = enc(**t, output_hidden_states=True).hidden_states[SPLIT]
            for j, cap in enumerate(chunk):
                n = int(t["attention_mask"][j].sum())
                states[cap] = hs[j, :n].half().clone()
    print(f"cached {len(flat)} captions at layer {SPLIT} in {time.time() - t0:.0f}s", flush=True)
    torch.save(states, path)
    return states


class TopText(nn.Module):
    def __init__(self, enc, n_train, d, head="linear"):
        super().__init__()
        self.enc = enc
        self.layers = enc.encoder.layer[SPLIT:]
        for p in enc.parameters():
            p.requires_grad_(False)
        for layer in list(self.layers)[len(self.layers) - n_train:] if n_train else []:
            for p in layer.parameters():
                p.requires_grad_(True)
        self.n_train = n_train
        self.proj = nn.Linear(enc.config.hidden_size, d) if head == "linear" else None

    def forward(self, h, mask):
        m4 = self.enc._create_attention_masks(attention_mask=mask, encoder_attention_mask=None, embedding_output=h,
                                              encoder_hidden_states=None, cache=None)[0]
        for i, layer in enumerate(self.layers):
            if i < len(self.layers) - self.n_train:
                with torch.no_grad():
                    h = layer(h, m4)
            else:
                h = layer(h, m4)
        m = mask.unsqueeze(-1).to(h.dtype)
        p = (h * m).sum(1) / m.sum(1)
        if self.proj is not None:
            p = self.proj(F.normalize(p, dim=-1))
        return F.normalize(p, dim=-1)


def pad(states_list):
    n = max(s.shape[0] for s in states_list)
    h = torch.zeros(len(states_list), n, states_list[0].shape[1])
    m = torch.zeros(len(states_list), n, dtype=torch.long)
    for i, s in enumerate(states_list):
        h[i, : s.shape[0]] = s.float()
        m[i, : s.shape[0]] = 1
    return h, m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--enc_lr", type=float, default=5e-5)
    ap.add_argument("--head", default="linear")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--temp", type=float, default=0.05)
    ap.add_argument("--vis", default="linear")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c, feats, emb, text = E.load(ROOT / "runs/exp/text_cache.pt")
    feats = feats.float()
    cp = ROOT / "runs/exp/states_l7.pt"
    states = torch.load(cp) if cp.exists() else build_cache(c, text, cp)
    torch.manual_seed(args.seed)
    enc = load_text_encoder(None)
    enc.eval()  # no dropout in the experiment
    d = 384 if args.head == "identity" else args.d
    tm = TopText(enc, args.n, d, args.head)
    vis = nn.Linear(2048, d) if args.vis == "linear" else nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, d))
    logt = nn.Parameter(torch.tensor(math.log(args.temp)))
    enc_params = [p for p in tm.layers.parameters() if p.requires_grad]
    head_params = list(vis.parameters()) + ([logt]) + (list(tm.proj.parameters()) if tm.proj is not None else [])
    groups = [{"params": head_params, "lr": args.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": args.enc_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    tr, va, te = (c["split"][s] for s in ("train", "val", "test"))
    caps = []
    for i in tr.tolist():
        en1 = text["t1_en"][i][0].strip()
        g = {l: [text[f"t1_{l}"][i][0]] for l in E.LANGS}
        g["en"] += [t for t in text["t2_en"][i] if t.strip() != en1]
        g["de"] += list(text["t2_de"][i])
        caps.append(g)
    steps_per = len(tr) // args.bs
    total = steps_per * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, int(0.05 * total))) *
                                              0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    g = torch.Generator().manual_seed(args.seed)

    def enc_texts(idx):
        out = {}
        with torch.no_grad():
            for l in E.LANGS:
                h, m = pad([states[text[f"t1_{l}"][i][0]] for i in idx.tolist()])
                out[l] = tm(h, m)
        return out

    def evaluate(idx):
        with torch.no_grad():
            v = F.normalize(vis(feats[idx]), dim=-1)
            t = enc_texts(idx)
        r = {l: E.sumr_one(t[l], v) for l in E.LANGS}
        r["mean"] = sum(r[l] for l in E.LANGS) / 4
        return r

    best, hist, t0 = (-1, 0, None), [], time.time()
    for ep in range(args.epochs):
        perm = torch.randperm(len(tr), generator=g)
        for s in range(steps_per):
            bi = perm[s * args.bs:(s + 1) * args.bs]
            texts = [caps[b][l][int(torch.randint(len(caps[b][l]), (1,), generator=g))] for b in bi.tolist()
                     for l in E.LANGS]
            h, m = pad([states[t] for t in texts])
            t = tm(h, m)
            v = F.normalize(vis(feats[tr[bi]]), dim=-1)
            B, K = len(bi), len(E.LANGS)
            logits = v @ t.t() / logt.exp()
            tgt = torch.zeros_like(logits)
            tgt.view(B, B, K)[torch.arange(B), torch.arange(B)] = 1.0 / K
            loss = 0.5 * (-(tgt * logits.log_softmax(1)).sum(1).mean()
                          + F.cross_entropy(logits.t(), torch.arange(B).repeat_interleave(K)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                logt.clamp_(math.log(0.001), math.log(0.5))
        r = evaluate(va)
        hist.append(round(r["mean"], 1))
        if r["mean"] > best[0]:
            best = (r["mean"], ep + 1, evaluate(te))
    bt = best[2]
    print(json.dumps(vars(args)), f"val {best[0]:.1f} @ep{best[1]} test {bt['mean']:.1f} "
          + " ".join(f"{k}={bt[k]:.1f}" for k in E.LANGS) + f" steps {total} {time.time() - t0:.0f}s hist {hist}",
          flush=True)


if __name__ == "__main__":
    main()

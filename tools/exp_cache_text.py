"""Experiment helper: encode every shipped caption once with the frozen e5 encoder and save pooled embeddings.

Writes ``runs/exp/text_cache.pt``: ``{"feats": [1000, 2048], "split": {...}, "emb": {set: [1000, k, 384]}}``
for the sets task1 en/de/fr/cs (k=1) and task2 en/de (k=5), masked-mean pooled last states with the
"query: " prefix (what the methods see with ``text_prefix="query: "``). Also the input states of the top
``--top`` layers (token level) for the fine-tuning experiments when ``--tokens``.

Usage: ``OMP_NUM_THREADS=2 python tools/exp_cache_text.py [--data /work/shared/data]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccr_fast.data.readers import read_multi30k  # noqa: E402
from ccr_fast.data.shipped import shipped_split_indices  # noqa: E402
from ccr_fast.data.collate import tokenize  # noqa: E402
from ccr_fast.models.text import load_text_encoder, load_tokenizer, masked_mean  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default=str(ROOT / "runs" / "exp" / "text_cache.pt"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    d = Path(args.data)
    import numpy as np
    feats = np.load(d / "features/test_2016_flickr-resnet50-avgpool.npy").astype(np.float32)
    sets = {}
    for lang in ("en", "de", "fr", "cs"):
        sets[f"t1_{lang}"] = [[c] for _, c in read_multi30k(d / "multi30k/task1/raw", "test_2016_flickr", lang,
                                                           d / "multi30k/task1/image_splits/test_2016_flickr.txt")]
    for lang in ("en", "de"):
        cols = [[c for _, c in read_multi30k(d / "multi30k/task2/raw", f"test_2016.{k}", lang,
                                            d / "multi30k/task2/image_splits/test_2016_images.txt")] for k in range(1, 6)]
        sets[f"t2_{lang}"] = [list(x) for x in zip(*cols)]
    tok = load_tokenizer(None)
    enc = load_text_encoder(None).eval()
    emb = {}
    t0 = time.time()
    for name, caps in sets.items():
        flat = [c for per in caps for c in per]
        out = []
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
        res = [None] * len(flat)
        with torch.no_grad():
            for s in range(0, len(flat), 128):
                idx = order[s:s + 128]
                t = tokenize(tok, [flat[i] for i in idx], 40, "query: ")
                h = enc(**t).last_hidden_state
                p = masked_mean(h, t["attention_mask"])
                for j, i in enumerate(idx):
                    res[i] = p[j]
        emb[name] = torch.stack(res).view(len(caps), -1, p.shape[-1])
        print(name, tuple(emb[name].shape), f"{time.time() - t0:.0f}s", flush=True)
    split = {s: torch.as_tensor(shipped_split_indices(s)) for s in ("train", "val", "test")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"feats": torch.from_numpy(feats), "split": split, "emb": emb, "text": sets}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Media throughput: images/s of feature extraction and of a vision-tower training step, with DataLoader workers.

Writes (once) N JPEG images of mixed sizes with Pillow and a random-init ViT-S/16-sized CLIP vision tower at 224 px
(hidden 384, 12 layers: the compute of the real model; the weights do not change the speed) saved with
``save_pretrained``. Then measures, in one process:

* ``decode``: images/s of Pillow decoding + the image processor alone (the DataLoader's work), per worker count;
* ``extract``: images/s of ``ccr_fast.extract_features`` (decode in workers + tower forward + fp16 ``.npy``), per
  worker count, and the peak RSS growth of the process during it;
* ``train_step``: images/s of one training step through the tower (forward + backward of the last block, pooled
  output, InfoNCE against random text embeddings, AdamW), the batches decoded by DataLoader workers.

Output: ``benchmarks/results/media-cpu.json``; ``benchmarks/RESULTS.md`` is regenerated from every JSON there (section
rendered by :func:`ccr_fast.bench.report.media_section`). Usage: ``python benchmarks/bench_media.py [--images 96]
[--workers 0 2] [--dir /tmp/ccr_media_bench]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def setup(root: Path, n: int) -> tuple:
    import torch
    import transformers as T
    from PIL import Image

    tower = root / "vit-s16-clip"
    if not (tower / "config.json").is_file():
        torch.manual_seed(0)
        cfg = T.CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                                 image_size=224, patch_size=16, projection_dim=384)
        T.CLIPVisionModel(cfg).save_pretrained(tower)
        T.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(tower)
    imgs = root / "images"
    imgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        p = imgs / f"im{i:05d}.jpg"
        if not p.is_file():
            h, w = int(rng.integers(240, 481)), int(rng.integers(320, 641))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
    return tower, sorted(str(p) for p in imgs.glob("*.jpg"))[:n]


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dir", default="/tmp/ccr_media_bench")
    ap.add_argument("--out", default=str(HERE / "results" / "media-cpu.json"))
    a = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    import torch

    import ccr_fast
    from ccr_fast.data.media import media_loader
    from ccr_fast.data.media_data import get_tower
    from ccr_fast.losses import clip_loss

    root = Path(a.dir)
    tower_dir, paths = setup(root, a.images)
    tower, proc = get_tower(str(tower_dir))
    load0 = os.getloadavg()
    rows = []
    for w in a.workers:
        t = time.perf_counter()
        n = sum(len(b["index"]) for b in media_loader(paths, proc, a.batch_size, w))
        rows.append({"stage": "decode", "workers": w, "images": n, "seconds": time.perf_counter() - t})
    for w in a.workers:
        out = root / f"feat-w{w}.npy"
        for f in (out, out.with_name(out.stem + ".partial.npy"), out.with_name(out.stem + ".progress.json")):
            f.unlink(missing_ok=True)
        rss0 = peak_rss_kib()
        t = time.perf_counter()
        ccr_fast.extract_features(str(tower_dir), paths, out, batch_size=a.batch_size, num_workers=w, progress=False)
        rows.append({"stage": "extract", "workers": w, "images": len(paths), "seconds": time.perf_counter() - t,
                     "peak_rss_growth_kib": peak_rss_kib() - rss0})
    tower.set_trainable([-1])
    tower.train()
    params = [p for p in tower.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    for w in a.workers:
        steps, n, t = 0, 0, time.perf_counter()
        for b in media_loader(paths, proc, a.batch_size, w):
            v = torch.nn.functional.normalize(tower(b["pixel_values"]), dim=-1)
            txt = torch.nn.functional.normalize(torch.randn(v.shape), dim=-1)
            loss = clip_loss(v, txt, 20.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps, n = steps + 1, n + v.shape[0]
        rows.append({"stage": "train_step", "workers": w, "images": n, "steps": steps,
                     "seconds": time.perf_counter() - t, "trainable": "last block + post-norm + projection"})
    tower.set_trainable([])
    tower.eval()
    for r in rows:
        r["images_per_s"] = r["images"] / r["seconds"]
    payload = {"suite": "media", "device": "cpu", "tower": "CLIP ViT-S/16 vision tower at 224 px (random init)",
               "images": len(paths), "batch_size": a.batch_size, "rows": rows,
               "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
               "platform": platform.platform(), "torch": torch.__version__,
               "command": "python benchmarks/bench_media.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(payload, indent=2))
    from ccr_fast.bench.report import write_results_md

    write_results_md(str(Path(a.out).parent), str(HERE / "RESULTS.md"))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ccr_fast.extract_features / ccr-fast extract: files, ids, dtypes, tokens, determinism, resume after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ccr_fast
from ccr_fast.data.readers import read_npy_features
from ccr_fast.models.towers import load_image_processor, load_vision_tower
from ccr_fast.data.media import encode_images, list_images

from media_helpers import write_images


def test_extract_folder_files_ids_dtypes(towers, image_set, tmp_path):
    folder = image_set / "images"
    out = ccr_fast.extract_features(towers("clip"), folder, tmp_path / "f16.npy", batch_size=5, progress=False)
    assert out == str(tmp_path / "f16.npy")
    ids, arr = read_npy_features(out)  # the readers' own loader finds <out>.ids.txt
    files = list_images(folder)
    assert ids == [f.stem for f in files] and arr.dtype == np.float16 and arr.shape == (len(files), 32)
    assert not (tmp_path / "f16.partial.npy").exists() and not (tmp_path / "f16.progress.json").exists()
    f32 = ccr_fast.extract_features(towers("clip"), folder, tmp_path / "f32", dtype="float32", batch_size=5,
                                    progress=False)
    assert f32.endswith("f32.npy")
    want = encode_images(load_vision_tower(towers("clip")), load_image_processor(towers("clip")), files,
                         batch_size=5).numpy()
    np.testing.assert_array_equal(np.load(f32), want)
    np.testing.assert_array_equal(arr, want.astype(np.float16))
    patches = ccr_fast.extract_features(towers("siglip"), [str(f) for f in files[:6]], tmp_path / "p.npy",
                                        tokens="patches", progress=False)
    assert np.load(patches).shape == (6, 16, 32)


def test_extract_from_csv(towers, image_set, tmp_path):
    out = ccr_fast.extract_features(towers("vit"), image_set / "train.csv", tmp_path / "x.npy", progress=False)
    ids, arr = read_npy_features(out)
    assert ids == [f"img{i:03d}" for i in range(16)] and arr.shape == (16, 32)


def test_extract_deterministic(towers, image_set, tmp_path):
    a = ccr_fast.extract_features(towers("swin"), image_set / "images", tmp_path / "a.npy", batch_size=7,
                                  num_workers=2, progress=False)
    b = ccr_fast.extract_features(towers("swin"), image_set / "images", tmp_path / "b.npy", batch_size=7,
                                  progress=False)
    assert Path(a).read_bytes() == Path(b).read_bytes()  # byte-identical, with or without DataLoader workers


def test_extract_bad_input(towers, tmp_path):
    write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "zz_broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="zz_broken.png"):
        ccr_fast.extract_features(towers("clip"), tmp_path / "imgs", tmp_path / "o.npy", progress=False)
    with pytest.raises(ValueError, match="dtype"):
        ccr_fast.extract_features(towers("clip"), tmp_path / "imgs", tmp_path / "o.npy", dtype="int8")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ccr_fast.extract_features(towers("clip"), tmp_path / "nowhere", tmp_path / "o.npy")


SLOW_SCRIPT = """
import sys, time, torch
import ccr_fast.models.towers as T
orig = T.VisionTower.forward
def slow(self, x):
    time.sleep(0.25)
    return orig(self, x)
T.VisionTower.forward = slow
from ccr_fast.inference.extract import main
main(sys.argv[1:])
"""


def test_extract_resumes_after_kill(towers, tmp_path):
    names = write_images(tmp_path / "imgs", 40)
    out = tmp_path / "feat.npy"
    args = [str(towers("clip")), str(tmp_path / "imgs"), str(out), "--batch-size", "4", "--dtype", "float32",
            "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SCRIPT, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    prog = tmp_path / "feat.progress.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if prog.is_file():
            try:
                if json.loads(prog.read_text())["done"] >= 8:
                    break
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(prog.read_text())["done"]
    assert 8 <= done < 40 and not out.exists()
    # started again: continues after the recorded rows
    import ccr_fast.data.media as M

    seen = []

    real = M.media_loader

    def spy(items, processor, batch_size, num_workers=0, skip_bad=False, start=0):
        seen.append(start)
        return real(items, processor, batch_size, num_workers, skip_bad, start)

    M.media_loader = spy
    try:
        res = ccr_fast.extract_features(towers("clip"), tmp_path / "imgs", out, batch_size=4, dtype="float32",
                                        progress=False)
    finally:
        M.media_loader = real
    assert seen == [done]  # the resumed run starts at the first unfinished row
    full = ccr_fast.extract_features(towers("clip"), tmp_path / "imgs", tmp_path / "ref.npy", batch_size=4,
                                     dtype="float32", progress=False)
    np.testing.assert_array_equal(np.load(res), np.load(full))  # no lost or repeated rows
    ids, _ = read_npy_features(res)
    assert ids == [Path(n).stem for n in sorted(names)]


def test_cli_extract(towers, image_set, tmp_path):
    out = tmp_path / "cli.npy"
    r = subprocess.run([sys.executable, "-m", "ccr_fast", "extract", str(towers("clip")),
                        str(image_set / "images"), str(out), "--dtype", "float32", "--no-progress"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out) and np.load(out).shape == (24, 32)
    r = subprocess.run([sys.executable, "-m", "ccr_fast", "extract", "nobody/none", str(image_set / "images"),
                        str(out)], capture_output=True, text=True,
                       env=dict(os.environ, HF_HUB_CACHE=str(tmp_path), PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 2 and "nobody/none" in r.stderr and len(r.stderr.strip().splitlines()) == 1

"""ccr_fast.Index: exact search (float64 order, ties to the lower row) in every block layout, save / load / mmap,
appends in place, bad input naming the argument or file, and a gallery larger than the address-space limit."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ccr_fast import Index


def reference(q, g, k):
    """float64 scores, stable order (score desc, index asc), the k best: (scores float64 [Q, k], indices [Q, k])."""
    s = q.double() @ g.double().T
    order = torch.argsort(-s, dim=1, stable=True)[:, :k]  # stable: equal scores keep ascending index
    return s.gather(1, order), order


def with_duplicates(G, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(G, d, generator=gen)
    g[G // 2] = g[1]  # exact duplicates: equal scores for every query, the lower row first
    g[G - 1] = g[1]
    g[3] = 0.0  # an all-zero row ties with other zeros
    g[G // 3] = 0.0
    q = torch.randn(9, d, generator=gen)
    q[0] = g[1]  # a query equal to the duplicated row
    return q, g


@pytest.mark.parametrize("block_rows", [None, 1, 7, 64, 997])
@pytest.mark.parametrize("k", [1, 5, 13])
def test_exact_order_with_duplicates_any_block_size(block_rows, k):
    q, g = with_duplicates(600, 24)
    ix = Index(24, block_rows=block_rows).add(g)
    scores, idx = ix.search(q, k)
    ref_s, ref_i = reference(q, g, k)
    assert torch.equal(idx, ref_i)
    assert scores.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(scores, ref_s.float(), rtol=0, atol=0)
    # the duplicates of row 1 come out in row order
    dup = [j for j in idx[0].tolist() if j in (1, 300, 599)]
    assert dup == sorted(dup)


def test_near_ties_are_ordered_by_float64_across_blocks():
    """Two rows whose fp32 scores round equal but whose float64 scores differ, in different blocks: the float64
    order wins (the merge does not compare fp32 values)."""
    d = 4
    g = torch.zeros(10, d)
    g[:, 0] = -1.0
    g[2] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    g[8] = torch.tensor([1.0, 2.0 ** -30, 0.0, 0.0])  # same fp32 score as row 2 for q, larger in float64
    q = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    for br in (None, 3, 5):
        _, idx = Index(d, block_rows=br).add(g).search(q, 2)
        assert idx[0].tolist() == [8, 2], br


def test_ids_len_and_repr():
    ix = Index(3)
    assert len(ix) == 0 and ix.ids == []
    ix.add(torch.eye(3), ids=["a", "b", "c"]).add(np.ones((2, 3), dtype=np.float64))
    assert len(ix) == 5 and ix.ids == ["a", "b", "c", "3", "4"]
    assert "len=5" in repr(ix)
    s, i = ix.search(torch.tensor([0.0, 1.0, 0.0]), k=10)  # k > len: every row
    assert i.shape == (1, 5) and i[0, 0].item() in (1, 3)


def test_empty_queries_and_empty_index():
    ix = Index(5).add(torch.randn(4, 5))
    s, i = ix.search(torch.zeros(0, 5), 3)
    assert s.shape == (0, 3) and i.shape == (0, 3)
    s, i = Index(5).search(torch.randn(2, 5), 3)
    assert s.shape == (2, 0)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip_and_append_in_place(tmp_path, mmap):
    q, g = with_duplicates(500, 16, seed=1)
    ids = [f"img{j}" for j in range(500)]
    Index(16, fingerprint="abc", kind="visual").add(g[:300], ids[:300]).save(tmp_path / "ix")
    emb = tmp_path / "ix" / "embeddings.npy"
    assert np.array_equal(np.load(emb), g[:300].numpy())  # a standard .npy
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["dim"] == 16 and meta["dtype"] == "float32" and meta["fingerprint"] == "abc" and meta["count"] == 300

    ix = Index.load(tmp_path / "ix", mmap=mmap, block_rows=37)
    assert ix.fingerprint == "abc" and ix.kind == "visual" and len(ix) == 300
    inode, size0 = emb.stat().st_ino, emb.stat().st_size
    with open(emb, "rb") as f:
        first_rows = f.read(size0)[128:]
    ix.add(g[300:], ids[300:])  # appended to the files, not rewritten
    assert emb.stat().st_ino == inode
    with open(emb, "rb") as f:
        assert f.read()[128: size0] == first_rows
    assert np.array_equal(np.load(emb), g.numpy())
    for again in (ix, Index.load(tmp_path / "ix", mmap=mmap, block_rows=41)):
        assert again.ids == ids and len(again) == 500
        _, idx = again.search(q, 12)
        assert torch.equal(idx, reference(q, g, 12)[1])
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["count"] == 500


def test_load_accepts_a_plain_np_save_file(tmp_path):
    g = torch.randn(20, 6)
    folder = tmp_path / "ix"
    Index(6).add(g).save(folder)
    np.save(folder / "embeddings.npy", g[:10].numpy())
    (folder / "ids.txt").write_text("".join(f"{j}\n" for j in range(10)))
    meta = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**meta, "count": 10}))
    ix = Index.load(folder)
    ix.add(g[10:])
    assert np.array_equal(np.load(folder / "embeddings.npy"), g.numpy())
    assert torch.equal(Index.load(folder).search(g[:3], 4)[1], reference(g[:3], g, 4)[1])


def test_bad_input_raises_naming_the_argument():
    ix = Index(8).add(torch.randn(5, 8))
    with pytest.raises(ValueError, match="embeddings"):
        ix.add(torch.randn(3, 7))
    with pytest.raises(ValueError, match="ids"):
        ix.add(torch.randn(3, 8), ids=["a", "b"])
    with pytest.raises(ValueError, match="ids"):
        ix.add(torch.randn(1, 8), ids=["a\nb"])
    with pytest.raises(ValueError, match="queries"):
        ix.search(torch.randn(2, 9), 3)
    with pytest.raises(ValueError, match="queries"):
        ix.search(torch.full((1, 8), float("nan")), 3)
    with pytest.raises(ValueError, match="k"):
        ix.search(torch.randn(2, 8), 0)
    with pytest.raises(TypeError, match="k"):
        ix.search(torch.randn(2, 8), 2.5)
    with pytest.raises(ValueError, match="dim"):
        Index(0)
    with pytest.raises(ValueError, match="engine"):
        Index(4, engine="hnsw")
    assert len(ix) == 5  # nothing was added by the failed calls


@pytest.mark.parametrize("damage", ["truncate", "ids", "json", "count", "width", "missing"])
def test_corrupt_folder_names_the_file(tmp_path, damage):
    folder = tmp_path / "ix"
    Index(4).add(torch.randn(6, 4)).save(folder)
    name = {"truncate": "embeddings.npy", "ids": "ids.txt", "json": "index.json", "count": "index.json",
            "width": "embeddings.npy", "missing": "ids.txt"}[damage]
    p = folder / name
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:-5])
    elif damage == "ids":
        p.write_text("a\nb\n")
    elif damage == "json":
        p.write_text("{not json")
    elif damage == "count":
        p.write_text(json.dumps({"format": 1, "dim": 4, "dtype": "float32", "count": 9}))
    elif damage == "width":
        np.save(p, np.zeros((6, 5), dtype=np.float32))
    else:
        p.unlink()
    with pytest.raises((ValueError, FileNotFoundError), match=name.replace(".", r"\.")):
        Index.load(folder)


def test_faiss_engine_and_to_faiss_agree_with_exact_on_easy_data():
    faiss = pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(3)
    g = torch.nn.functional.normalize(torch.randn(2000, 32, generator=gen), dim=1)
    q = g[:50] + 0.01 * torch.randn(50, 32, generator=gen)
    exact = Index(32).add(g).search(q, 10)[1]
    approx = Index(32, engine="faiss-ivf", nlist=16, nprobe=16).add(g).search(q, 10)[1]  # every list probed
    assert (approx[:, 0] == exact[:, 0]).all()
    flat = Index(32).add(g).to_faiss("flat")
    assert isinstance(flat, faiss.IndexFlatIP)
    _, fi = flat.search(q.numpy(), 1)
    assert (torch.from_numpy(fi)[:, 0] == exact[:, 0]).all()


def test_gallery_larger_than_the_address_space_limit(tmp_path):
    """A memory-mapped index is searched one block at a time: a 256 MiB gallery is searched in a process whose
    address space may grow by only 160 MiB after start-up (RLIMIT_AS), and gives the exact answer."""
    pytest.importorskip("resource")
    script = textwrap.dedent(r"""
        import resource, sys
        import numpy as np, torch
        torch.set_num_threads(1)
        from ccr_fast import Index
        folder, d, G = sys.argv[1], 64, 1 << 20  # 1M rows x 64 x fp32 = 256 MiB
        gen = np.random.default_rng(0)
        Index(d).save(folder)
        ix = Index.load(folder, block_rows=1 << 15)
        q = gen.standard_normal((3, d)).astype(np.float32)
        planted = {}
        for s in range(0, G, 1 << 16):  # written in chunks: never the whole gallery in memory
            rows = gen.standard_normal((1 << 16, d)).astype(np.float32) * 0.01
            if s == 5 << 16:
                rows[7] = q[0]; planted[0] = s + 7
            if s == 13 << 16:
                rows[9] = q[1]; rows[10] = q[1]; planted[1] = s + 9
            ix.add(rows)
        ix = Index.load(folder, mmap=True, block_rows=1 << 15)
        ix.search(q, 5)  # warm: threads and allocator arenas exist before the limit
        vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize")][0]
        limit = vm + (160 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            np.ones((G, d), dtype=np.float32)  # the gallery in memory would not fit
            print("NOLIMIT")
        except MemoryError:
            pass
        s, i = ix.search(q, 5)
        assert i[0, 0].item() == planted[0], i
        assert i[1, :2].tolist() == [planted[1], planted[1] + 1], i
        print("OK", len(ix))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big")], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "NOLIMIT" not in r.stdout
    assert f"OK {1 << 20}" in r.stdout

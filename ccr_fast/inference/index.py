"""An exact inner-product index whose embeddings can stay on disk (:class:`Index`, ``ccr_fast.Index``).

Search is exact: each gallery block goes through the fused top-K (:func:`ccr_fast.retrieval.topk`, float64 order,
ties to the lower row), and the per-block candidates are merged by their float64 scores (the top-K's own float64
score, :func:`ccr_fast.ops.exact.rescore`) with ties to the lower *global* row index, so the result is the float64
order of the whole gallery whatever the block size. A saved index is a folder:

* ``embeddings.npy`` — ``[G, dim]`` float32 rows (a standard ``.npy`` file whose header leaves room to grow, so
  :meth:`Index.add` on a loaded index appends rows and rewrites only the header);
* ``ids.txt`` — one id per line (UTF-8, row order);
* ``index.json`` — ``{"format", "dim", "dtype", "count", "fingerprint", "kind", "checkpoint"}``: the embedding width,
  the row dtype, the number of rows, and the fingerprint / path of the model that made them (when built through
  :class:`ccr_fast.inference.Retriever`).

``Index.load(folder, mmap=True)`` keeps the rows on disk and reads one block at a time while searching, so neither
the resident set nor the address space grows with the gallery (only the ids are held in memory).
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["Index", "FORMAT"]

FORMAT = 1
EMB, IDS, META = "embeddings.npy", "ids.txt", "index.json"
_HEADER = 128  # bytes of the .npy preamble + header we write (fixed, so appends rewrite it in place)
_MAGIC = b"\x93NUMPY\x01\x00"
_BLOCK_BYTES = 64 << 20  # gallery bytes searched per block
ENGINES = ("exact", "faiss-ivf")


# ------------------------------------------------------------------------------------------------- .npy header
def _header_bytes(rows: int, dim: int, total: int = _HEADER) -> bytes:
    """A version-1.0 ``.npy`` preamble + header for float32 ``[rows, dim]``, padded to ``total`` bytes."""
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    body_len = total - len(_MAGIC) - 2
    if len(d) + 1 > body_len:
        raise ValueError(f"index: {rows} rows of width {dim} do not fit the embeddings header")
    body = d.ljust(body_len - 1) + "\n"
    return _MAGIC + np.uint16(body_len).tobytes() + body.encode("latin1")


def _read_header(path: Path) -> Tuple[int, int, int]:
    """``(rows, dim, data offset)`` of an embeddings file; ValueError naming the file when it is not ours."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        raise ValueError(f"index: cannot read {path} ({' '.join(str(exc).split())})") from exc
    if dtype != np.dtype("<f4") or fortran or len(shape) != 2:
        raise ValueError(f"index: {path} must hold a C-order float32 [G, dim] array, got {dtype} {shape}")
    rows, dim = int(shape[0]), int(shape[1])
    if size != offset + rows * dim * 4:
        raise ValueError(f"index: {path} is truncated or corrupt: header says {rows}x{dim} float32 "
                         f"({offset + rows * dim * 4} bytes), the file has {size} bytes")
    return rows, dim, offset


# ------------------------------------------------------------------------------------------------ arguments
def _as_rows(x, dim: int, what: str) -> torch.Tensor:
    """``x`` ([n, dim] tensor or array) as a contiguous float32 CPU tensor; ValueError on a wrong shape."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        try:
            t = torch.from_numpy(np.array(x, dtype=np.float32, copy=True))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what}: expected a [n, {dim}] float array or tensor, got {type(x).__name__}") from exc
    if t.dim() == 1 and t.numel() == dim:
        t = t.view(1, dim)
    if t.dim() != 2 or t.shape[1] != dim:
        raise ValueError(f"{what}: expected shape [n, {dim}] (the index width), got {tuple(t.shape)}")
    if not (t.is_floating_point()):
        raise TypeError(f"{what}: expected floating-point values, got {t.dtype}")
    t = t.to(torch.float32).contiguous()
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what}: contains NaN or Inf")
    return t


def _as_ids(ids, n: int, start: int) -> List[str]:
    if ids is None:
        return [str(i) for i in range(start, start + n)]
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids: expected a sequence of ids, got a single string")
    out = [str(i) for i in ids]
    if len(out) != n:
        raise ValueError(f"ids: expected {n} ids (one per embedding row), got {len(out)}")
    bad = [i for i in out if "\n" in i or "\r" in i]
    if bad:
        raise ValueError(f"ids: an id may not contain a line break, got {bad[0]!r}")
    return out


def _merge(best_s, best_i, s, i, k):
    """The k best of two candidate sets by (float64 score desc, global index asc)."""
    if best_s is None:
        s_all, i_all = s, i
    else:
        s_all, i_all = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
    order = torch.argsort(i_all, dim=1, stable=True)  # ascending index first ...
    s_all, i_all = s_all.gather(1, order), i_all.gather(1, order)
    order = torch.argsort(s_all, dim=1, descending=True, stable=True)[:, :k]  # ... then score, stable
    return s_all.gather(1, order), i_all.gather(1, order)


# -------------------------------------------------------------------------------------------------- Index
class Index:
    """Exact inner-product index over ``[G, dim]`` float32 embeddings with string ids.

    Args:
        dim: embedding width (>= 1).
        engine: ``"exact"`` (default: the fused top-K, float64 order, ties to the lower row) or ``"faiss-ivf"``
            (approximate: a faiss ``IndexIVFFlat`` over inner products, built on the first search; needs faiss).
        nlist, nprobe: IVF lists and lists probed per query (``"faiss-ivf"`` only; ``nlist=None`` = 4·√G).
        fingerprint: the fingerprint of the model whose embeddings these are (set by the Retriever).
        kind: what the rows embed (``"visual"`` or ``"text"``; set by the Retriever).
        block_rows: gallery rows per searched block (None: about 64 MiB of rows).
    """

    def __init__(self, dim: int, *, engine: str = "exact", nlist: Optional[int] = None, nprobe: int = 16,
                 fingerprint: Optional[str] = None, kind: Optional[str] = None, checkpoint: Optional[str] = None,
                 block_rows: Optional[int] = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
        if block_rows is not None and (isinstance(block_rows, bool) or int(block_rows) < 1):
            raise ValueError(f"block_rows: expected a positive int or None, got {block_rows!r}")
        self.dim = int(dim)
        self.engine, self.nlist, self.nprobe = engine, nlist, int(nprobe)
        self.fingerprint, self.kind, self.checkpoint = fingerprint, kind, checkpoint
        self.block_rows = int(block_rows) if block_rows else max(1, _BLOCK_BYTES // (4 * self.dim))
        self._ids: List[str] = []
        self._mem: List[torch.Tensor] = []  # in-memory rows (chunks as added)
        self._folder: Optional[Path] = None  # a loaded index: its files (appends go there)
        self._disk_rows, self._offset, self._on_disk, self._version = 0, _HEADER, False, 1
        self._faiss = None

    # --- contents ---------------------------------------------------------------------------------------------
    @property
    def ids(self) -> List[str]:
        """The id of each row, in row order."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        where = f", folder={str(self._folder)!r}" if self._folder is not None else ""
        return f"Index(dim={self.dim}, len={len(self)}, engine={self.engine!r}{where})"

    def add(self, embeddings, ids: Optional[Sequence] = None) -> "Index":
        """Append rows ``embeddings [n, dim]`` with ``ids`` (default: their row numbers as strings).

        On an index loaded from a folder the rows and ids are appended to the files there (nothing is rewritten
        but the 128-byte embeddings header and ``index.json``).
        """
        rows = _as_rows(embeddings, self.dim, "embeddings")
        new_ids = _as_ids(ids, rows.shape[0], len(self))
        if rows.shape[0] == 0:
            return self
        if self._folder is not None:
            self._append_to_disk(rows, new_ids)
        if not self._on_disk:
            self._mem.append(rows)
        self._ids.extend(new_ids)
        self._faiss = None
        return self

    def embeddings(self) -> torch.Tensor:
        """All rows as one ``[G, dim]`` float32 tensor in memory (reads a loaded index whole)."""
        if not self._on_disk:
            return torch.cat(self._mem) if self._mem else torch.zeros(0, self.dim)
        return torch.cat([b for _, b in self._blocks()]) if len(self) else torch.zeros(0, self.dim)

    def _blocks(self, block_rows: Optional[int] = None):
        """``(start row, [n, dim] float32 tensor)`` over the gallery, one block at a time."""
        step = int(block_rows or self.block_rows)
        if not self._on_disk:
            start = 0
            for chunk in self._mem:
                for s in range(0, chunk.shape[0], step):
                    yield start + s, chunk[s: s + step]
                start += chunk.shape[0]
            return
        path = self._folder / EMB
        for s in range(0, self._disk_rows, step):
            n = min(step, self._disk_rows - s)
            block = np.fromfile(path, dtype="<f4", count=n * self.dim, offset=self._offset + s * self.dim * 4)
            if block.size != n * self.dim:
                raise ValueError(f"index: {path} ended early (rows {s}..{s + n} missing)")
            yield s, torch.from_numpy(block.reshape(n, self.dim))  # one block in memory at a time

    # --- search -----------------------------------------------------------------------------------------------
    def search(self, queries, k: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
        """The k best rows per query by inner product, best first.

        Args:
            queries: ``[Q, dim]`` (or ``[dim]``) float array or tensor.
            k: results per query (>= 1); an index with fewer rows returns all of them.

        Returns:
            ``(scores [Q, min(k, G)] float32, indices [Q, min(k, G)] int64)``. The exact engine orders by the
            float64 inner products, ties to the lower row.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k: expected an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        q = _as_rows(queries, self.dim, "queries")
        kk = min(int(k), len(self))
        if q.shape[0] == 0 or kk == 0:
            return torch.zeros(q.shape[0], kk), torch.zeros(q.shape[0], kk, dtype=torch.int64)
        if self.engine == "faiss-ivf":
            return self._search_faiss(q, kk)
        return self._search_exact(q, kk)

    def _search_exact(self, q: torch.Tensor, k: int):
        from ..ops.exact import rescore
        from ..retrieval import topk

        best_s = best_i = None
        for start, block in self._blocks():
            _, idx = topk(q, block, min(k, block.shape[0]))
            s64 = rescore(q, block, idx)  # the float64 score the exact top-K orders by (one summation order)
            best_s, best_i = _merge(best_s, best_i, s64, idx + start, k)
        return best_s.to(torch.float32), best_i

    # --- faiss ------------------------------------------------------------------------------------------------
    def to_faiss(self, kind: str = "ivf", nlist: Optional[int] = None, nprobe: Optional[int] = None):
        """A faiss index over these rows: ``kind="flat"`` (``IndexFlatIP``, exact up to fp32 rounding) or
        ``"ivf"`` (``IndexIVFFlat``, inner product, ``nlist`` lists (default 4·√G), ``nprobe`` probed).
        Reads a loaded index whole."""
        try:
            import faiss
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("to_faiss needs faiss (pip install faiss-cpu)") from exc
        if kind not in ("flat", "ivf"):
            raise ValueError(f"kind: expected 'flat' or 'ivf', got {kind!r}")
        x = self.embeddings().numpy()
        if kind == "flat":
            ix = faiss.IndexFlatIP(self.dim)
        else:
            n = int(nlist or self.nlist or max(1, round(4 * np.sqrt(max(1, len(x))))))
            n = max(1, min(n, len(x)))
            ix = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, n, faiss.METRIC_INNER_PRODUCT)
            ix.train(x)
            ix.nprobe = int(nprobe or self.nprobe)
        ix.add(x)
        return ix

    def _search_faiss(self, q: torch.Tensor, k: int):
        if self._faiss is None:
            self._faiss = self.to_faiss("ivf")
        s, i = self._faiss.search(q.numpy(), k)
        return torch.from_numpy(s).float(), torch.from_numpy(i).long()

    # --- persistence ------------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": FORMAT, "dim": self.dim, "dtype": "float32", "count": len(self),
                "fingerprint": self.fingerprint, "kind": self.kind, "checkpoint": self.checkpoint}

    def save(self, folder) -> Path:
        """Write the index to ``folder`` (created; existing index files there are replaced)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"index: {folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        if self._folder is not None and folder.resolve() == self._folder.resolve():
            self._write_meta(folder)
            return folder
        tmp = folder / (EMB + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_header_bytes(len(self), self.dim))
            for _, block in self._blocks():
                f.write(block.numpy().astype("<f4", copy=False).tobytes())
        os.replace(tmp, folder / EMB)
        (folder / IDS).write_text("".join(i + "\n" for i in self._ids), encoding="utf-8")
        self._write_meta(folder)
        return folder

    def _write_meta(self, folder: Path) -> None:
        tmp = folder / (META + ".tmp")
        tmp.write_text(json.dumps(self.meta(), indent=1))
        os.replace(tmp, folder / META)

    def _append_to_disk(self, rows: torch.Tensor, ids: List[str]) -> None:
        folder = self._folder
        path = folder / EMB
        with open(path, "r+b") as f:
            f.seek(self._offset + self._disk_rows * self.dim * 4)
            f.write(rows.numpy().astype("<f4", copy=False).tobytes())
            f.flush()
            f.seek(0)
            f.write(_header_bytes(self._disk_rows + rows.shape[0], self.dim, self._offset))
        with open(folder / IDS, "a", encoding="utf-8") as f:
            f.write("".join(i + "\n" for i in ids))
        self._disk_rows += rows.shape[0]
        tmp = folder / (META + ".tmp")
        tmp.write_text(json.dumps({**self.meta(), "count": self._disk_rows}, indent=1))
        os.replace(tmp, folder / META)

    @classmethod
    def load(cls, folder, mmap: bool = True, *, engine: str = "exact", block_rows: Optional[int] = None) -> "Index":
        """An index saved by :meth:`save`. With ``mmap=True`` the rows stay on disk and are read one block at a
        time while searching; ``mmap=False`` reads them into memory. Later :meth:`add` calls append to the folder.

        Raises:
            FileNotFoundError: a missing folder or file (named). ValueError: a corrupt file (named), or files that
            disagree (row counts, widths).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"index: {folder} is not a folder (expected {EMB}, {IDS} and {META} there)")
        for name in (META, EMB, IDS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"index: {folder / name} is missing")
        try:
            meta = json.loads((folder / META).read_text())
            dim, count = int(meta["dim"]), int(meta["count"])
            if meta.get("dtype", "float32") != "float32":
                raise ValueError(f"dtype {meta.get('dtype')!r} (expected 'float32')")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"index: {folder / META} is corrupt ({' '.join(str(exc).split())})") from exc
        rows, width, offset = _read_header(folder / EMB)
        if width != dim:
            raise ValueError(f"index: {folder / EMB} has rows of width {width}, {folder / META} says dim={dim}")
        try:
            ids = (folder / IDS).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"index: cannot read {folder / IDS} ({exc})") from exc
        if ids and ids[-1] == "":
            ids.pop()
        if len(ids) != rows:
            raise ValueError(f"index: {folder / IDS} has {len(ids)} ids but {folder / EMB} has {rows} rows")
        if count != rows:
            raise ValueError(f"index: {folder / META} says count={count} but {folder / EMB} has {rows} rows")
        ix = cls(dim, engine=engine, fingerprint=meta.get("fingerprint"), kind=meta.get("kind"),
                 checkpoint=meta.get("checkpoint"), block_rows=block_rows)
        ix._folder, ix._disk_rows, ix._offset, ix._on_disk = folder, rows, offset, bool(mmap)
        ix._ids = ids
        if not mmap and rows:
            ix._mem = [torch.from_numpy(np.array(np.load(folder / EMB, mmap_mode="r"), dtype=np.float32))]
        return ix

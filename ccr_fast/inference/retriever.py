"""A trained checkpoint as a search engine: :func:`load` → :class:`Retriever` (``ccr_fast.load``).

The Retriever ranks exactly as :func:`ccr_fast.evaluate` ranks that checkpoint: both take their embeddings from the
method's ``ranking_encoders()`` (plain L2-normalised embeddings, or for a query-bank-normalised ranking the
augmented ``[t, 1, −c_t]`` / ``[v, −c_v, 1]`` rows of :mod:`ccr_fast.eval.querybank`), encoded in the evaluation's
batches, and an :class:`~ccr_fast.inference.Index` orders their inner products by the float64 order with ties to the
lower row — the rule of the evaluation's rank counter. So Recall@K read from :meth:`Retriever.search` on a test split is
``evaluate``'s t2v R@K.

NRCCR's translate-test fusion applies when the English machine translations of the queries are given
(``search(..., queries_mt=...)``), as evaluation applies it to sets that have them. Not carried over: a CCR^k
checkpoint with the ITM re-rank on (``ccrk.k_test > 0``) is searched by its first (ITC) stage, with a warning.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .index import Index

__all__ = ["load", "Retriever", "fingerprint"]


def fingerprint(checkpoint) -> str:
    """The model fingerprint of a checkpoint folder: SHA-256 (first 16 hex digits) of its ``model.safetensors``
    (the trained weights, and the content hash of a frozen encoder kept outside the file)."""
    h = hashlib.sha256()
    with open(Path(checkpoint) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load(checkpoint, device: str = "auto") -> "Retriever":
    """A :class:`Retriever` for a checkpoint folder (or a run folder: its best, else last, checkpoint).

    Args:
        checkpoint: folder written by :func:`ccr_fast.train`.
        device: ``"auto"`` (CUDA when visible), ``"cpu"`` or ``"cuda[:i]"`` — where the model encodes.

    Raises:
        ValueError: not a checkpoint folder, or weights that do not match the model it describes.
    """
    from ..training.checkpoint import load_checkpoint_model, resolve_checkpoint

    if not isinstance(device, str):
        raise TypeError(f"device: expected a string ('auto', 'cpu', 'cuda[:i]'), got {type(device).__name__}")
    path = resolve_checkpoint(checkpoint)
    method, cfg = load_checkpoint_model(path, device=device)
    return Retriever(method, cfg, path)


def _is_media(x) -> bool:
    if isinstance(x, (str, Path)):
        return True
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


class Retriever:
    """Encode texts / images with a trained method and search an :class:`Index` with its ranking.

    Attributes:
        method: the loaded method (eval mode). config: its :class:`ccr_fast.config.Config`.
        checkpoint: the checkpoint folder. fingerprint: :func:`fingerprint` of it (stored in every index built
            here; searching an index of another model raises ValueError).
    """

    def __init__(self, method, cfg, checkpoint):
        self.method, self.config = method, cfg
        self.checkpoint = Path(checkpoint).resolve()
        self.fingerprint = fingerprint(self.checkpoint)
        self.batch_size = int(cfg.eval.batch_size)
        self._rank_text, self._rank_visual = method.ranking_encoders()
        if int(getattr(method.mcfg, "k_test", 0) or 0) > 0:
            warnings.warn(f"{cfg.method}: the checkpoint re-ranks the top {method.mcfg.k_test} candidates with its "
                          "ITM head at evaluation; search ranks by the first (ITC) stage only", stacklevel=3)

    def __repr__(self) -> str:
        return f"Retriever(method={self.config.method!r}, checkpoint={str(self.checkpoint)!r})"

    # --- inputs -----------------------------------------------------------------------------------------------
    @staticmethod
    def _texts(texts, what: str = "texts") -> List[str]:
        if isinstance(texts, str):
            return [texts]
        if isinstance(texts, (bytes, np.ndarray, torch.Tensor)) or not isinstance(texts, Iterable):
            raise TypeError(f"{what}: expected a string or a list of strings, got {type(texts).__name__}")
        out = list(texts)
        bad = [type(t).__name__ for t in out if not isinstance(t, str)]
        if bad:
            raise TypeError(f"{what}: expected strings, got a {bad[0]}")
        return out

    def _images(self, images):
        """A feature array ``[N, Dv]`` / ``[N, F, Dv]`` (float32) or a list of paths / PIL images."""
        if isinstance(images, (str, Path)) or _is_media(images):
            images = [images]
        if isinstance(images, (list, tuple)) and images and all(_is_media(x) for x in images):
            return self._media_features(list(images))
        if isinstance(images, (list, tuple)) and not images:
            return np.zeros((0, int(self.config.model.visual_dim or 1)), dtype=np.float32)
        if isinstance(images, (list, tuple)) and any(_is_media(x) for x in images):
            raise TypeError("images: expected only image paths / PIL images, or a feature array, not a mixture")
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        try:
            arr = np.asarray(images, dtype=np.float32) if not isinstance(images, np.memmap) else images
        except (TypeError, ValueError) as exc:
            raise TypeError("images: expected image paths / PIL images, or a feature array [N, Dv] or [N, F, Dv], "
                            f"got {type(images).__name__}") from exc
        dv = self.config.model.visual_dim
        if arr.ndim not in (2, 3) or (dv is not None and arr.shape[-1] != int(dv)):
            raise ValueError(f"images: expected a feature array [N, {dv}] or [N, F, {dv}] (the width the model was "
                             f"trained on), got shape {tuple(arr.shape)}")
        return arr

    def _media_features(self, items: list) -> np.ndarray:
        """Paths / PIL images → the features the model's visual encoder takes (its frozen vision tower's outputs,
        as its training data were encoded; ValueError for a model trained on feature arrays)."""
        return self.method.media_features(items)

    # --- embeddings -------------------------------------------------------------------------------------------
    def _batches(self, encode, inputs, progress: bool = False, desc: str = "") -> torch.Tensor:
        """``encode`` over consecutive slices of ``batch_size`` (the evaluation's slices), concatenated on CPU."""
        n = len(inputs)
        starts = range(0, n, self.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch")
        out = []
        with torch.no_grad():
            for s in starts:
                out.append(encode(inputs[s: s + self.batch_size]).detach().float().cpu())
        return torch.cat(out) if out else None

    def encode_text(self, texts, lang: Optional[str] = None) -> torch.Tensor:
        """L2-normalised float32 text embeddings ``[N, d]`` (batched, eval mode).

        ``lang`` names the texts' language (accepted for language-aware encoders; the shipped methods encode every
        language alike)."""
        texts = self._texts(texts)
        if lang is not None and not isinstance(lang, str):
            raise TypeError(f"lang: expected a language code string or None, got {type(lang).__name__}")
        out = self._batches(self.method.encode_text, texts)
        return out if out is not None else torch.zeros(0, self._plain_dim())

    def encode_images(self, images) -> torch.Tensor:
        """L2-normalised float32 visual embeddings ``[N, d]`` of a feature array ``[N, Dv]`` / ``[N, F, Dv]``
        (a model trained on features) or of image paths / PIL images (a model with a vision tower)."""
        out = self._batches(self.method.encode_visual, self._images(images))
        return out if out is not None else torch.zeros(0, self._plain_dim())

    def _plain_dim(self) -> int:
        return int(self.method.encode_text([""]).shape[1])

    def index_embeddings(self, items, kind: str = "visual", progress: bool = False) -> torch.Tensor:
        """The rows an index of ``kind`` (``"visual"``: anything :meth:`encode_images` takes; ``"text"``:
        strings) holds: the model's ranking embeddings, ``[N, D]`` float32 (D = d, or d + 2 with a query bank)."""
        if kind == "visual":
            items, enc = self._images(items), self._rank_visual
        elif kind == "text":
            items, enc = self._texts(items), self._rank_text
        else:
            raise ValueError(f"kind: expected 'visual' or 'text', got {kind!r}")
        out = self._batches(enc, items, progress=progress, desc=f"encoding {kind}")
        return out if out is not None else torch.zeros(0, self.dim)

    @property
    def dim(self) -> int:
        """Width of the ranking embeddings (the width of the indexes this Retriever builds)."""
        if not hasattr(self, "_dim"):
            self._dim = int(self._rank_text([""]).shape[1])
        return self._dim

    def new_index(self, kind: str = "visual", **kw) -> Index:
        """An empty :class:`Index` for this model's ranking embeddings (fingerprint, kind, checkpoint set)."""
        return Index(self.dim, fingerprint=self.fingerprint, kind=kind, checkpoint=str(self.checkpoint), **kw)

    # --- index and search -------------------------------------------------------------------------------------
    def build_index(self, gallery, ids: Optional[Sequence] = None, **index_kw) -> Index:
        """An :class:`Index` of ``gallery`` (anything :meth:`encode_images` takes); ``ids`` default to ``"0".."G-1"``.

        The rows are the model's ranking embeddings, so searching the index ranks as :func:`ccr_fast.evaluate`
        ranks (query-bank normalisation included). ``index_kw`` go to :class:`Index` (e.g. ``engine``)."""
        rows = self.index_embeddings(gallery, "visual")
        if ids is not None and len(list(ids)) != rows.shape[0]:
            raise ValueError(f"ids: expected {rows.shape[0]} ids (one per gallery item), got {len(list(ids))}")
        return self.new_index("visual", **index_kw).add(rows, ids)

    def build_text_index(self, texts, ids: Optional[Sequence] = None, lang: Optional[str] = None,
                         **index_kw) -> Index:
        """An :class:`Index` of captions, for image→text search (``search(images, index)``)."""
        rows = self.index_embeddings(texts, "text")
        if ids is not None and len(list(ids)) != rows.shape[0]:
            raise ValueError(f"ids: expected {rows.shape[0]} ids (one per text), got {len(list(ids))}")
        return self.new_index("text", **index_kw).add(rows, ids)

    def check_index(self, index: Index) -> None:
        """ValueError unless ``index`` holds this model's ranking embeddings (fingerprint and width)."""
        if not isinstance(index, Index):
            raise TypeError(f"index: expected a ccr_fast.Index, got {type(index).__name__}")
        if index.fingerprint is not None and index.fingerprint != self.fingerprint:
            raise ValueError(f"index: it was built by another model (fingerprint {index.fingerprint}, this checkpoint "
                             f"{self.fingerprint} at {self.checkpoint}); rebuild the index with this checkpoint")
        if index.dim != self.dim:
            raise ValueError(f"index: width {index.dim}, but this model's ranking embeddings are {self.dim}-d")

    def search(self, queries, index: Index, k: int = 10, lang: Optional[str] = None,
               queries_mt: Optional[Sequence[str]] = None) -> List[List[Tuple[str, float]]]:
        """The ``k`` best index items per query, best first, as ``(id, score)`` lists.

        Args:
            queries: for an index of images, texts (a string or a list); for an index of texts
                (:meth:`build_text_index`), images (anything :meth:`encode_images` takes). A float tensor / array
                ``[Q, index.dim]`` is taken as ranking embeddings already (:meth:`index_embeddings`).
            index: an :class:`Index` built by this model (fingerprint checked).
            k: results per query (>= 1; fewer when the index is smaller).
            lang: language of text queries (see :meth:`encode_text`).
            queries_mt: for a method with translate-test fusion (NRCCR), the English machine translation of each
                text query: scores are then fused as evaluation fuses them, ``w·minmax(S_mt) + (1−w)·minmax(S)``
                with min and max over these queries × the whole index (so a query's scores depend on the batch it
                is searched with, as in evaluation). Without it (or for other methods) the direct ranking is used.

        Returns:
            one list per query of ``(id, score)`` (score: the ranking's inner product as a float).
        """
        self.check_index(index)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k: expected an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        dv = self.config.model.visual_dim
        if (isinstance(queries, (torch.Tensor, np.ndarray)) and queries.ndim == 2 and queries.shape[1] == index.dim
                and (index.kind != "text" or dv is None or int(dv) != index.dim)):
            q = queries  # ranking embeddings already
        elif isinstance(queries, (list, tuple)) and not queries:
            return []
        elif index.kind == "text":
            q = self.index_embeddings(queries, "visual")
        else:
            q = self.index_embeddings(self._texts(queries, "queries"), "text")
        if len(q) == 0:
            return []
        weight = getattr(self.method, "translate_test_weight", None)
        if queries_mt is not None:
            if weight is None or index.kind == "text":
                raise ValueError(f"queries_mt: {self.config.method} defines no translate-test fusion for this search")
            mt = self._texts(queries_mt, "queries_mt")
            if len(mt) != len(q):
                raise ValueError(f"queries_mt: expected {len(q)} translations (one per query), got {len(mt)}")
            scores, idx = fused_search(index, q, self.index_embeddings(mt, "text"), float(weight), k)
        else:
            scores, idx = index.search(q, k)
        ids = index.ids
        return [[(ids[j], float(s)) for s, j in zip(srow.tolist(), irow.tolist())] for srow, irow in zip(scores, idx)]


def fused_search(index: Index, text: torch.Tensor, text_mt: torch.Tensor, weight: float, k: int):
    """Translate-test fusion over an index, as :func:`ccr_fast.eval.fused_ranks` scores it.

    ``f = w·(S_mt − lo_mt)/(hi_mt − lo_mt) + (1 − w)·(S − lo)/(hi − lo)`` with ``S = text @ rowsᵀ`` and
    ``S_mt = text_mt @ rowsᵀ`` in float32, min/max over all queries × all rows (a first pass over the blocks); the
    second pass keeps the k best per query by ``(f desc, row asc)``. Returns ``(scores [Q, k'], rows [Q, k'])``.
    """
    t = torch.as_tensor(text, dtype=torch.float32)
    tm = torch.as_tensor(text_mt, dtype=torch.float32)
    if t.shape != tm.shape or t.dim() != 2 or t.shape[1] != index.dim:
        raise ValueError(f"queries_mt: expected embeddings shaped like the queries {tuple(t.shape)} (width "
                         f"{index.dim}), got {tuple(tm.shape)}")
    kk = min(int(k), len(index))
    if kk == 0:
        return torch.zeros(t.shape[0], 0), torch.zeros(t.shape[0], 0, dtype=torch.int64)
    lo1 = lo2 = float("inf")
    hi1 = hi2 = float("-inf")
    for _, rows in index._blocks():
        s1, s2 = t @ rows.T, tm @ rows.T
        lo1, hi1 = min(lo1, float(s1.min())), max(hi1, float(s1.max()))
        lo2, hi2 = min(lo2, float(s2.min())), max(hi2, float(s2.max()))
    span1, span2 = hi1 - lo1, hi2 - lo2
    best_s = best_i = None
    for start, rows in index._blocks():
        s1, s2 = t @ rows.T, tm @ rows.T
        n1 = (s1 - lo1) / span1 if span1 > 0 else torch.zeros_like(s1)
        n2 = (s2 - lo2) / span2 if span2 > 0 else torch.zeros_like(s2)
        f = weight * n2 + (1.0 - weight) * n1
        vals, order = torch.sort(f, dim=1, descending=True, stable=True)  # ties: the lower row first
        vals, order = vals[:, :kk], order[:, :kk] + start
        if best_s is None:
            best_s, best_i = vals, order
        else:  # earlier blocks first, so a stable sort keeps the lower row ahead on ties
            s_all, i_all = torch.cat([best_s, vals], 1), torch.cat([best_i, order], 1)
            o = torch.sort(s_all, dim=1, descending=True, stable=True)[1][:, :kk]
            best_s, best_i = s_all.gather(1, o), i_all.gather(1, o)
    return best_s, best_i


# ---------------------------------------------------------------------------------------------- command line
def _feature_ids(path: Path, n: int) -> List[str]:
    """Ids of a feature file ``X.npy``: ``X.ids.txt`` beside it (one per row) or ``"0".."n-1"``."""
    ids_path = path.with_name(path.name[:-4] + ".ids.txt") if path.name.endswith(".npy") else None
    if ids_path is None or not ids_path.is_file():
        return [str(i) for i in range(n)]
    ids = ids_path.read_text(encoding="utf-8").split("\n")
    if ids and ids[-1] == "":
        ids.pop()
    if len(ids) != n:
        raise ValueError(f"--features: {ids_path} has {len(ids)} ids but {path} has {n} rows")
    return ids


def _one_line_usage_errors(ap) -> None:
    """Usage errors of a subcommand print one line ``error: ...`` and exit 2 (argparse prints the usage too)."""
    import sys

    def error(message):
        print(f"error: {ap.prog.split()[-1]}: {' '.join(str(message).split())}", file=sys.stderr)
        sys.exit(2)

    ap.error = error


def add_index_arguments(ap) -> None:
    """Arguments of ``ccr-fast index``."""
    _one_line_usage_errors(ap)
    ap.add_argument("checkpoint", help="checkpoint (or run) folder written by `ccr-fast train`")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="feature array X.npy [G, Dv] (ids from X.ids.txt beside it, else 0..G-1)")
    src.add_argument("--images", help="folder of images (ids = file stems; needs a model with a vision tower)")
    ap.add_argument("--out", required=True, help="index folder to write")
    ap.add_argument("--append", action="store_true", help="add to the index already in --out (same model)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_index(a) -> dict:
    """``ccr-fast index``: encode the gallery in batches and write (or extend) the index folder."""
    from tqdm.auto import tqdm

    out = Path(a.out)
    if (out / "index.json").exists() and not a.append:
        raise ValueError(f"--out: {out} already holds an index (pass --append to add to it)")
    if a.features:
        path = Path(a.features)
        if not path.is_file():
            raise FileNotFoundError(f"--features: {path} does not exist")
        try:
            items = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ValueError(f"--features: {path} is not a readable .npy array ({exc})") from exc
        ids = _feature_ids(path, len(items))
    else:
        from .extract import list_inputs

        items, ids = list_inputs(a.images)
    r = load(a.checkpoint, device=a.device)
    if a.append:
        ix = Index.load(out)
        r.check_index(ix)
        if ix.kind not in (None, "visual"):
            raise ValueError(f"--out: {out} is an index of {ix.kind}, not of images")
    else:
        r.new_index("visual").save(out)
        ix = Index.load(out)
    step = r.batch_size * 32  # whole evaluation batches per chunk
    bar = tqdm(total=len(ids), unit="item", desc="index", disable=a.no_progress)
    for s in range(0, len(ids), step):
        ix.add(r.index_embeddings(items[s: s + step], "visual"), ids[s: s + step])
        bar.update(min(step, len(ids) - s))
    bar.close()
    return {"index": str(out), "count": len(ix), "dim": ix.dim, "fingerprint": ix.fingerprint}


def add_search_arguments(ap) -> None:
    """Arguments of ``ccr-fast search``."""
    _one_line_usage_errors(ap)
    ap.add_argument("index", help="index folder written by `ccr-fast index`")
    ap.add_argument("query", nargs="?", default=None, help="a caption (an image path for an index of texts)")
    ap.add_argument("--queries", help="a file with one query per line (searched after QUERY, if given)")
    ap.add_argument("--lang", default=None, help="language of the queries (e.g. de)")
    ap.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    ap.add_argument("--checkpoint", default=None, help="the model (default: the checkpoint the index records)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")


def run_search(a) -> List[dict]:
    """``ccr-fast search``: one ``{"id", "score", "rank", "query"}`` dict per hit (rank 1 = best)."""
    queries = [] if a.query is None else [a.query]
    if a.queries:
        qp = Path(a.queries)
        if not qp.is_file():
            raise FileNotFoundError(f"--queries: {qp} does not exist")
        queries += [line.rstrip("\r") for line in qp.read_text(encoding="utf-8").split("\n") if line.strip()]
    if a.query is None and not a.queries:
        raise ValueError("search: give a QUERY or --queries FILE")
    if a.k < 1:
        raise ValueError(f"--k: expected >= 1, got {a.k}")
    ix = Index.load(a.index)
    ckpt = a.checkpoint or ix.checkpoint
    if not ckpt:
        raise ValueError(f"index: {a.index} records no checkpoint; pass --checkpoint")
    r = load(ckpt, device=a.device)
    hits = r.search(queries, ix, k=a.k, lang=a.lang)
    return [{"id": i, "score": s, "rank": n + 1, "query": q}
            for q, row in zip(queries, hits) for n, (i, s) in enumerate(row)]

// CPU (C++17 + OpenMP) kernels of the streaming top-K op family. Contract: docs/interop.md ("topk").
//
// For each query a bounded heap of the k best (score, index) candidates lives directly in the output rows
// (root = the worst kept candidate, so a candidate that is not better than the current k-th costs one
// compare). The gallery is streamed in blocks of `block_size` rows; the scores of a query block against at
// most kGalleryTile gallery rows at a time come from one ccr::score_tile (gemm_tile.h) into a per-thread
// [kQueryBlock, kGalleryTile] buffer, then are offered to the heaps. Tasks are (query block x gallery split):
// with many queries there is one split and threads own query blocks; with few queries (< 2 per thread) the
// gallery is split across threads, each split keeps its own heaps in a [splits, Q, k] buffer, and a final
// pass merges them. The order (score desc, index asc) is total, so the result does not depend on the split.
// Memory: O(Q k) (O(splits Q k) on the few-queries path) besides the inputs.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"
#include "cpu_util.h"
#include "gemm_tile.h"

namespace py = pybind11;

namespace {

using std::int64_t;

constexpr int64_t kQueryBlock = 48;    // queries per task: rows of one score tile (packing cost ~1/48 of it)
constexpr int64_t kGalleryTile = 256;  // gallery rows per score tile: a 48 x 256 tile (48 KiB in float32)

// Heap over external storage ordered by ccr::better: the root is the worst kept candidate.
template <typename T>
struct WorstHeap {
  T* s;
  int64_t* idx;
  int64_t size;
  int64_t cap;

  // true when candidate p is worse than candidate q (p should sit above q in the heap)
  bool worse(int64_t p, int64_t q) const { return ccr::better(s[q], idx[q], s[p], idx[p]); }
  void swap(int64_t p, int64_t q) {
    std::swap(s[p], s[q]);
    std::swap(idx[p], idx[q]);
  }
  void sift_up(int64_t c) {
    while (c > 0) {
      const int64_t p = (c - 1) / 2;
      if (!worse(c, p)) break;
      swap(c, p);
      c = p;
    }
  }
  void sift_down(int64_t p, int64_t n) {
    for (;;) {
      const int64_t l = 2 * p + 1, r = l + 1;
      int64_t w = p;
      if (l < n && worse(l, w)) w = l;
      if (r < n && worse(r, w)) w = r;
      if (w == p) return;
      swap(p, w);
      p = w;
    }
  }
  void offer(T v, int64_t id) {
    if (v != v) v = -std::numeric_limits<T>::infinity();  // an overflowed (NaN) score ranks last
    if (size < cap) {
      s[size] = v;
      idx[size] = id;
      sift_up(size++);
    } else if (ccr::better(v, id, s[0], idx[0])) {
      s[0] = v;
      idx[0] = id;
      sift_down(0, size);
    }
  }
  // Heap sort: repeatedly moving the worst to the end leaves the rows sorted best-first.
  void sort_descending() {
    for (int64_t n = size - 1; n > 0; --n) {
      swap(0, n);
      sift_down(0, n);
    }
  }
};

template <typename T>
void topk_impl(const T* q, int64_t ldq, const T* g, int64_t ldg, int64_t Q, int64_t G, int64_t d, int64_t k,
               int64_t block_size, int64_t num_splits, T* out_s, int64_t* out_i) {
  const int64_t nblocks = (G + block_size - 1) / block_size;
  const int nthreads = ccr::omp_threads();
  int64_t splits = num_splits;
  if (splits <= 0) splits = (Q >= 2 * nthreads) ? 1 : std::min<int64_t>(nthreads, nblocks);
  splits = std::max<int64_t>(1, std::min(splits, nblocks));
  const int64_t nqb = (Q + kQueryBlock - 1) / kQueryBlock;

  // Heaps of split p live in the output (p == 0 when splits == 1) or in the [splits, Q, k] buffer.
  std::vector<T> tmp_s;
  std::vector<int64_t> tmp_i;
  if (splits > 1) {
    tmp_s.resize(static_cast<size_t>(splits) * Q * k);
    tmp_i.resize(static_cast<size_t>(splits) * Q * k);
  }
  std::vector<int64_t> kept(static_cast<size_t>(splits) * Q, 0);

#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int64_t p = 0; p < splits; ++p) {
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t b0 = p * nblocks / splits, b1 = (p + 1) * nblocks / splits;
      const int64_t g0 = b0 * block_size, g1 = std::min(G, b1 * block_size);
      const int64_t q0 = qb * kQueryBlock, q1 = std::min(Q, q0 + kQueryBlock);
      T* hs = splits > 1 ? tmp_s.data() + static_cast<size_t>(p) * Q * k : out_s;
      int64_t* hi = splits > 1 ? tmp_i.data() + static_cast<size_t>(p) * Q * k : out_i;
      WorstHeap<T> heaps[kQueryBlock];
      for (int64_t i = q0; i < q1; ++i) heaps[i - q0] = WorstHeap<T>{hs + i * k, hi + i * k, 0, std::min(k, g1 - g0)};
      thread_local std::vector<T> tile;
      tile.resize(static_cast<size_t>(kQueryBlock) * kGalleryTile);
      for (int64_t c0 = g0; c0 < g1; c0 += block_size) {
        const int64_t c1 = std::min(g1, c0 + block_size);
        for (int64_t t0 = c0; t0 < c1; t0 += kGalleryTile) {
          const int64_t nt = std::min(kGalleryTile, c1 - t0);
          ccr::score_tile(q + q0 * ldq, ldq, q1 - q0, g + t0 * ldg, ldg, nt, d, tile.data(), kGalleryTile);
          for (int64_t i = q0; i < q1; ++i) {
            const T* row = tile.data() + (i - q0) * kGalleryTile;
            WorstHeap<T>& h = heaps[i - q0];
            for (int64_t j = 0; j < nt; ++j) h.offer(row[j], t0 + j);
          }
        }
      }
      for (int64_t i = q0; i < q1; ++i) {
        if (splits == 1) heaps[i - q0].sort_descending();
        kept[static_cast<size_t>(p) * Q + i] = heaps[i - q0].size;
      }
    }
  }
  if (splits == 1) return;

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < Q; ++i) {
    WorstHeap<T> h{out_s + i * k, out_i + i * k, 0, k};
    for (int64_t p = 0; p < splits; ++p) {
      const size_t base = (static_cast<size_t>(p) * Q + i) * k;
      const int64_t n = kept[static_cast<size_t>(p) * Q + i];
      for (int64_t t = 0; t < n; ++t) h.offer(tmp_s[base + t], tmp_i[base + t]);
    }
    h.sort_descending();
  }
}

void topk_cpu(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
              int64_t k, int64_t block_size, std::uintptr_t out_scores, std::uintptr_t out_indices, int dtype,
              int64_t num_splits) {
  CCR_CHECK_ARG(Q >= 1 && G >= 1 && d >= 1, "topk: Q, G and d must be >= 1, got Q=" + std::to_string(Q) +
                                                " G=" + std::to_string(G) + " d=" + std::to_string(d));
  CCR_CHECK_ARG(k >= 1 && k <= G, "topk: k must be in [1, G=" + std::to_string(G) + "], got " + std::to_string(k));
  CCR_CHECK_ARG(ldq >= d && ldg >= d, "topk: row strides ldq/ldg must be >= d");
  CCR_CHECK_ARG(block_size >= 0, "topk: block_size must be >= 0, got " + std::to_string(block_size));
  CCR_CHECK_ARG(dtype == ccr::kFloat32 || dtype == ccr::kFloat64,
                std::string("topk CPU kernel takes float32/float64, got dtype ") + ccr::dtype_name(dtype));
  if (block_size == 0) {
    // Default: gallery blocks of about 256 KiB so that a block stays in L2 while kQueryBlock queries scan it.
    const int64_t elem = dtype == ccr::kFloat32 ? 4 : 8;
    block_size = std::max<int64_t>(16, std::min<int64_t>(4096, (256 * 1024) / (elem * d)));
  }
  auto* oi = ccr::as_ptr<int64_t>(out_indices);
  if (dtype == ccr::kFloat32)
    topk_impl<float>(ccr::as_ptr<const float>(q), ldq, ccr::as_ptr<const float>(g), ldg, Q, G, d, k, block_size,
                     num_splits, ccr::as_ptr<float>(out_scores), oi);
  else
    topk_impl<double>(ccr::as_ptr<const double>(q), ldq, ccr::as_ptr<const double>(g), ldg, Q, G, d, k, block_size,
                      num_splits, ccr::as_ptr<double>(out_scores), oi);
}

}  // namespace

void register_cpu_topk(py::module_& m) {
  m.def("topk_cpu", &topk_cpu,
        "Streaming top-k inner products: writes scores[Q, k] (acc dtype) and indices[Q, k] (int64), sorted "
        "descending, ties -> lower gallery index. block_size 0 = default; num_splits 0 = automatic gallery split "
        "(>1 forces the split-and-merge path, for tests).",
        py::arg("q"), py::arg("ldq"), py::arg("g"), py::arg("ldg"), py::arg("Q"), py::arg("G"), py::arg("d"),
        py::arg("k"), py::arg("block_size"), py::arg("out_scores"), py::arg("out_indices"), py::arg("dtype"),
        py::arg("num_splits") = 0, py::call_guard<py::gil_scoped_release>());
}

// CPU (C++17 + OpenMP) kernels of the target-rank counting op family. Contract: docs/interop.md ("ranks").
//
// rank(t) = #{c : s_c > s_t} + #{c : s_c == s_t and c < t}, for each valid target t (targets[q, :] padded with
// -1). The gallery scores of a query block come from ccr::score_tile (gemm_tile.h) one [kQueryBlock,
// kGalleryBlock] tile at a time, the target scores from ccr::score_one, which has exactly the arithmetic of every
// entry of a score_tile, so the target never outranks itself. Counts are additive over the gallery: tasks are (query block x gallery split); with few
// queries the gallery is split across threads into a [splits, Q, T] count buffer that is summed afterwards.
// Memory: O(Q T) (O(splits Q T) on the few-queries path) besides the inputs.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu_util.h"
#include "gemm_tile.h"

namespace py = pybind11;

namespace {

using std::int64_t;

constexpr int64_t kQueryBlock = 48;     // queries per task: rows of one score tile
constexpr int64_t kGalleryBlock = 256;  // gallery rows per block = columns of one score tile

template <typename T>
void ranks_impl(const T* q, int64_t ldq, const T* g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
                const int64_t* targets, int64_t T_, int64_t num_splits, int64_t* out_min, int64_t* out_all) {
  const int nthreads = ccr::omp_threads();
  const int64_t nblocks = (G + kGalleryBlock - 1) / kGalleryBlock;
  int64_t splits = num_splits;
  if (splits <= 0) splits = (Q >= 2 * nthreads) ? 1 : std::min<int64_t>(nthreads, nblocks);
  splits = std::max<int64_t>(1, std::min(splits, nblocks));
  const int64_t nqb = (Q + kQueryBlock - 1) / kQueryBlock;

  std::vector<T> tscore(static_cast<size_t>(Q) * T_, T(0));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < Q; ++i) {
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t c = targets[i * T_ + t];
      if (c >= 0) tscore[i * T_ + t] = ccr::score_one(q + i * ldq, g + c * ldg, d);
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(splits) * Q * T_, 0);

#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int64_t p = 0; p < splits; ++p) {
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t b0 = p * nblocks / splits, b1 = (p + 1) * nblocks / splits;
      const int64_t g0 = b0 * kGalleryBlock, g1 = std::min(G, b1 * kGalleryBlock);
      const int64_t q0 = qb * kQueryBlock, q1 = std::min(Q, q0 + kQueryBlock);
      int64_t* cnt = counts.data() + static_cast<size_t>(p) * Q * T_;
      thread_local std::vector<T> tile;
      tile.resize(static_cast<size_t>(kQueryBlock) * kGalleryBlock);
      for (int64_t c0 = g0; c0 < g1; c0 += kGalleryBlock) {
        const int64_t nc = std::min(g1, c0 + kGalleryBlock) - c0;
        ccr::score_tile(q + q0 * ldq, ldq, q1 - q0, g + c0 * ldg, ldg, nc, d, tile.data(), kGalleryBlock);
        for (int64_t i = q0; i < q1; ++i) {
          const T* row = tile.data() + (i - q0) * kGalleryBlock;
          for (int64_t t = 0; t < T_; ++t) {
            const int64_t tt = targets[i * T_ + t];
            if (tt < 0) continue;
            const T st = tscore[i * T_ + t];
            int64_t n = 0;
            for (int64_t j = 0; j < nc; ++j) n += (row[j] > st) | ((row[j] == st) & (c0 + j < tt));
            cnt[i * T_ + t] += n;
          }
        }
      }
    }
  }

#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < Q; ++i) {
    int64_t best = -1;
    for (int64_t t = 0; t < T_; ++t) {
      int64_t r = -1;
      if (targets[i * T_ + t] >= 0) {
        r = 0;
        for (int64_t p = 0; p < splits; ++p) r += counts[(static_cast<size_t>(p) * Q + i) * T_ + t];
        if (best < 0 || r < best) best = r;
      }
      if (out_all != nullptr) out_all[i * T_ + t] = r;
    }
    out_min[i] = best;
  }
}

void target_ranks_cpu(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
                      std::uintptr_t targets, int64_t T, std::uintptr_t out_ranks, std::uintptr_t out_all_ranks,
                      int dtype, int64_t num_splits) {
  CCR_CHECK_ARG(Q >= 1 && G >= 1 && d >= 1 && T >= 1,
                "target_ranks: Q, G, d and T must be >= 1, got Q=" + std::to_string(Q) + " G=" + std::to_string(G) +
                    " d=" + std::to_string(d) + " T=" + std::to_string(T));
  CCR_CHECK_ARG(ldq >= d && ldg >= d, "target_ranks: row strides ldq/ldg must be >= d");
  CCR_CHECK_ARG(dtype == ccr::kFloat32 || dtype == ccr::kFloat64,
                std::string("target_ranks CPU kernel takes float32/float64, got dtype ") + ccr::dtype_name(dtype));
  const auto* tg = ccr::as_ptr<const int64_t>(targets);
  for (int64_t n = 0; n < Q * T; ++n) {
    CCR_CHECK_ARG(tg[n] >= -1 && tg[n] < G, "target_ranks: targets must be in [-1, G=" + std::to_string(G) +
                                                "), got " + std::to_string(tg[n]) + " at flat position " +
                                                std::to_string(n));
  }
  auto* om = ccr::as_ptr<int64_t>(out_ranks);
  auto* oa = out_all_ranks ? ccr::as_ptr<int64_t>(out_all_ranks) : nullptr;
  if (dtype == ccr::kFloat32)
    ranks_impl<float>(ccr::as_ptr<const float>(q), ldq, ccr::as_ptr<const float>(g), ldg, Q, G, d, tg, T,
                      num_splits, om, oa);
  else
    ranks_impl<double>(ccr::as_ptr<const double>(q), ldq, ccr::as_ptr<const double>(g), ldg, Q, G, d, tg, T,
                       num_splits, om, oa);
}

}  // namespace

void register_cpu_ranks(py::module_& m) {
  m.def("target_ranks_cpu", &target_ranks_cpu,
        "0-based stable descending rank of each query's targets: targets[Q, T] int64 padded with -1; writes "
        "ranks[Q] (min over valid targets, -1 when none) and, when out_all_ranks != 0, all_ranks[Q, T] (-1 at "
        "padding). num_splits 0 = automatic gallery split (>1 forces the split path, for tests).",
        py::arg("q"), py::arg("ldq"), py::arg("g"), py::arg("ldg"), py::arg("Q"), py::arg("G"), py::arg("d"),
        py::arg("targets"), py::arg("T"), py::arg("out_ranks"), py::arg("out_all_ranks"), py::arg("dtype"),
        py::arg("num_splits") = 0, py::call_guard<py::gil_scoped_release>());
}

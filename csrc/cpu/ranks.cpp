// CPU (C++17 + OpenMP) kernels of the target-rank counting op family. Contract: docs/interop.md ("ranks").
//
// rank(t) = #{c : s_c > s_t} + #{c : s_c == s_t and c < t}, for each valid target t (targets[q, :] padded with
// -1), exact in float64 (docs/exactness.md): the target score is ccr::dot64 (the one float64 score); the gallery
// scores of a query block come from ccr::score_tile (gemm_tile.h, fp32 accumulation) one [kQueryBlock,
// kGalleryBlock] tile at a time and are compared against a band [s_t - b, s_t + b] that bounds their error; rows in
// the band are re-scored with dot64. Counts are additive over the gallery: tasks are (query block x gallery split); with few
// queries the gallery is split across threads into a [splits, Q, T] count buffer that is summed afterwards.
// Memory: O(Q T) (O(splits Q T) on the few-queries path) besides the inputs.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu_util.h"
#include "exact64.h"
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

  // float64 target scores (dot64) and per-query band half-widths (docs/exactness.md)
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const double rel = (ccr::gamma_n((double)d + 1, u) + 2 * ccr::gamma_n((double)d + 8, 0x1p-53)) * (1 + 1e-9);
  const double tiny = 8.0 * (double)(d + 1) * (double)std::numeric_limits<T>::min();
  double gmax = 0;
#pragma omp parallel for reduction(max : gmax) schedule(static)
  for (int64_t c = 0; c < G; ++c) gmax = std::max(gmax, std::sqrt(ccr::dot64(g + c * ldg, g + c * ldg, d)));
  gmax *= 1 + 1e-12;
  std::vector<double> est(static_cast<size_t>(Q) * T_, 0.0);
  std::vector<T> lo(static_cast<size_t>(Q) * T_, T(0)), hi(static_cast<size_t>(Q) * T_, T(0));
  std::vector<char> full(static_cast<size_t>(Q), 0);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < Q; ++i) {
    const double qn = std::sqrt(ccr::dot64(q + i * ldq, q + i * ldq, d)) * (1 + 1e-12);
    const double b = rel * qn * gmax + tiny;
    full[i] = !(qn * gmax < 0.25 * (double)std::numeric_limits<T>::max());
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t c = targets[i * T_ + t];
      if (c < 0) continue;
      const double e = ccr::dot64(q + i * ldq, g + c * ldg, d);
      est[i * T_ + t] = e;
      T l = (T)(e - b), h = (T)(e + b);  // rounded outwards to T
      if ((double)l > e - b) l = std::nextafter(l, -std::numeric_limits<T>::infinity());
      if ((double)h < e + b) h = std::nextafter(h, std::numeric_limits<T>::infinity());
      lo[i * T_ + t] = l;
      hi[i * T_ + t] = h;
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(splits) * Q * T_, 0);
  std::vector<std::vector<int64_t>> near(static_cast<size_t>(splits) * Q * T_);

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
          if (full[i]) continue;
          const T* row = tile.data() + (i - q0) * kGalleryBlock;
          for (int64_t t = 0; t < T_; ++t) {
            if (targets[i * T_ + t] < 0) continue;
            const T l = lo[i * T_ + t], h = hi[i * T_ + t];
            int64_t n = 0;
            bool band = false;
            for (int64_t j = 0; j < nc; ++j) {
              n += row[j] > h;
              band |= (row[j] >= l) & (row[j] <= h);
            }
            cnt[i * T_ + t] += n;
            if (band) {
              auto& nr = near[(static_cast<size_t>(p) * Q + i) * T_ + t];
              for (int64_t j = 0; j < nc; ++j)
                if (row[j] >= l && row[j] <= h) nr.push_back(c0 + j);
            }
          }
        }
      }
    }
  }

#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < Q; ++i) {
    int64_t best = -1;
    for (int64_t t = 0; t < T_; ++t) {
      int64_t r = -1;
      const int64_t c = targets[i * T_ + t];
      if (c >= 0) {
        const double sc = est[i * T_ + t];
        auto above = [&](int64_t o) {
          const double so = ccr::dot64(q + i * ldq, g + o * ldg, d);
          return (so > sc || (so == sc && o < c)) ? 1 : 0;
        };
        r = 0;
        if (full[i]) {
          for (int64_t o = 0; o < G; ++o) r += above(o);
        } else {
          for (int64_t p = 0; p < splits; ++p) {
            const size_t at = (static_cast<size_t>(p) * Q + i) * T_ + t;
            r += counts[at];
            for (const int64_t o : near[at]) r += above(o);
          }
        }
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

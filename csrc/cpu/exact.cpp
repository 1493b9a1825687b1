// Float64 settling of the exact retrieval ops and the bf16 candidate scorer of top-k (docs/exactness.md).
//
// * exact_rescore: float64 scores of given (query, gallery index) pairs through ccr::dot64;
// * exact_topk_f64: the float64 top-k of some queries over the whole gallery (the fallback when a bound cannot
//   certify a candidate list), ordered by (float64 score desc, index asc);
// * lowp_topk: candidate lists from bf16 products with fp32 accumulation (oneDNN BRGeMM, lowp_gemm.h) and a fused
//   threshold-filtered heap per query, plus the norms the Python layer needs for the error bound:
//   per query ||q||, ||q - bf16(q)||, ||bf16(q)|| and over the gallery the max of the same three row norms.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu_util.h"
#include "exact64.h"
#if __has_include("lowp_gemm.h")
#include "lowp_gemm.h"
#define CCR_EXACT_LOWP 1
#endif

namespace py = pybind11;

namespace ccr {

template <typename T>
__attribute__((noinline)) double dot64_impl(const T* a, const T* b, std::int64_t d) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += (double)a[j + l] * (double)b[j + l];
  for (int l = 0; j < d; ++j, ++l) acc[l] += (double)a[j] * (double)b[j];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

__attribute__((noinline)) double dot64(const float* a, const float* b, std::int64_t d) { return dot64_impl(a, b, d); }
__attribute__((noinline)) double dot64(const double* a, const double* b, std::int64_t d) {
  return dot64_impl(a, b, d);
}

}  // namespace ccr

namespace {

using std::int64_t;
template <typename T>
void rescore_impl(const T* q, int64_t ldq, const T* g, int64_t ldg, int64_t Q, int64_t d, const int64_t* idx,
                  int64_t n, double* out) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < Q; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = idx[i * n + j];
      out[i * n + j] = c < 0 ? -std::numeric_limits<double>::infinity() : ccr::dot64(q + i * ldq, g + c * ldg, d);
    }
}

void exact_rescore(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
                   std::uintptr_t idx, int64_t n, std::uintptr_t out, int dtype) {
  CCR_CHECK_ARG(Q >= 0 && G >= 1 && d >= 1 && n >= 0, "exact_rescore: bad sizes");
  CCR_CHECK_ARG(ldq >= d && ldg >= d, "exact_rescore: row strides must be >= d");
  CCR_CHECK_ARG(dtype == ccr::kFloat32 || dtype == ccr::kFloat64, "exact_rescore: float32/float64 only");
  const auto* ix = ccr::as_ptr<const int64_t>(idx);
  for (int64_t t = 0; t < Q * n; ++t)
    CCR_CHECK_ARG(ix[t] >= -1 && ix[t] < G, "exact_rescore: index out of [-1, G)");
  if (dtype == ccr::kFloat32)
    rescore_impl(ccr::as_ptr<const float>(q), ldq, ccr::as_ptr<const float>(g), ldg, Q, d, ix, n,
                 ccr::as_ptr<double>(out));
  else
    rescore_impl(ccr::as_ptr<const double>(q), ldq, ccr::as_ptr<const double>(g), ldg, Q, d, ix, n,
                 ccr::as_ptr<double>(out));
}

template <typename T>
void topk_f64_impl(const T* q, int64_t ldq, const T* g, int64_t ldg, int64_t Q, int64_t G, int64_t d, int64_t k,
                   double* out_s, int64_t* out_i) {
#pragma omp parallel
  {
    std::vector<std::pair<double, int64_t>> all((size_t)G);
    auto better = [](const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < Q; ++i) {
      for (int64_t c = 0; c < G; ++c) all[c] = {ccr::dot64(q + i * ldq, g + c * ldg, d), c};
      std::partial_sort(all.begin(), all.begin() + k, all.end(), better);
      for (int64_t j = 0; j < k; ++j) {
        out_s[i * k + j] = all[j].first;
        out_i[i * k + j] = all[j].second;
      }
    }
  }
}

void exact_topk_f64(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
                    int64_t k, std::uintptr_t out_s, std::uintptr_t out_i, int dtype) {
  CCR_CHECK_ARG(Q >= 0 && G >= 1 && d >= 1, "exact_topk_f64: bad sizes");
  CCR_CHECK_ARG(k >= 1 && k <= G, "exact_topk_f64: k must be in [1, G]");
  CCR_CHECK_ARG(ldq >= d && ldg >= d, "exact_topk_f64: row strides must be >= d");
  CCR_CHECK_ARG(dtype == ccr::kFloat32 || dtype == ccr::kFloat64, "exact_topk_f64: float32/float64 only");
  if (dtype == ccr::kFloat32)
    topk_f64_impl(ccr::as_ptr<const float>(q), ldq, ccr::as_ptr<const float>(g), ldg, Q, G, d, k,
                  ccr::as_ptr<double>(out_s), ccr::as_ptr<int64_t>(out_i));
  else
    topk_f64_impl(ccr::as_ptr<const double>(q), ldq, ccr::as_ptr<const double>(g), ldg, Q, G, d, k,
                  ccr::as_ptr<double>(out_s), ccr::as_ptr<int64_t>(out_i));
}

#ifdef CCR_EXACT_LOWP
using ccr::lowp::bf16;

// ------------------------------------------------------------------------------------------------ bf16 candidates
// Bounded heap over external storage; root = worst kept candidate under (score desc, index asc).
struct FHeap {
  float* s;
  int64_t* ix;
  int64_t n, k;
  bool worse(int64_t p, int64_t o) const { return ccr::better(s[o], ix[o], s[p], ix[p]); }
  void sw(int64_t p, int64_t o) {
    std::swap(s[p], s[o]);
    std::swap(ix[p], ix[o]);
  }
  void down(int64_t p, int64_t m) {
    for (;;) {
      const int64_t l = 2 * p + 1, r = l + 1;
      int64_t w = p;
      if (l < m && worse(l, w)) w = l;
      if (r < m && worse(r, w)) w = r;
      if (w == p) return;
      sw(p, w);
      p = w;
    }
  }
  void offer(float v, int64_t i) {
    if (n < k) {
      s[n] = v;
      ix[n] = i;
      int64_t c = n++;
      while (c > 0) {
        const int64_t p = (c - 1) / 2;
        if (!worse(c, p)) break;
        sw(c, p);
        c = p;
      }
      return;
    }
    if (!ccr::better(v, i, s[0], ix[0])) return;
    s[0] = v;
    ix[0] = i;
    down(0, n);
  }
  float threshold() const { return n < k ? -std::numeric_limits<float>::infinity() : s[0]; }
  void sort_desc() {
    for (int64_t m = n; m > 1; --m) {
      sw(0, m - 1);
      down(0, m - 1);
    }
  }
};

constexpr int64_t kWide = 512;  // gallery columns scored per epilogue pass (8 BRGeMM calls of 64)

// Offer one row of scores (gallery indices c0 + j) to a heap: a vectorised any(s >= threshold) per 64 columns
// drops almost every chunk before any scalar work.
__attribute__((target_clones("arch=x86-64-v4", "default"))) void offer_row(FHeap& h, const float* s, int64_t w,
                                                                          int64_t c0) {
  float t = h.threshold();
  for (int64_t j0 = 0; j0 < w; j0 += 64) {
    const int64_t e = std::min(w, j0 + 64);
    bool any = false;
    for (int64_t j = j0; j < e; ++j) any |= s[j] >= t;
    if (!any) continue;
    for (int64_t j = j0; j < e; ++j)
      if (s[j] >= t) {
        h.offer(s[j], c0 + j);
        t = h.threshold();
      }
  }
}

// Rows of x [N, d] (fp32, ld) -> bf16 (round to nearest even), written row-major [N, dp] (packed == false) or as
// the VNNI-2 B operand per 64-row block ([dp/2][64][2], packed == true), zero padded; and per row ||x||, ||x - bf16(x)||
// and ||bf16(x)||. The squares are summed in fp32 lanes (x - bf16(x) is exact in fp32) and the sums inflated by
// (1 + 2 gamma_d(2^-24)) before the square root, so every returned norm is an upper bound.
__attribute__((target_clones("arch=x86-64-v4", "default"))) void split_rows(const float* x, int64_t ldx, int64_t N,
                                                                            int64_t d, int64_t dp, bf16* out,
                                                                            bool packed, double* norms) {
  const double up = 1.0 + 2.0 * ccr::gamma_n((double)d + 16, 0x1p-24);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    float a[16] = {0}, l[16] = {0}, h[16] = {0};
    std::uint16_t hb[16];
    const float* xr = x + r * ldx;
    bf16* o = packed ? out + (r / 64) * 64 * dp : out + r * dp;
    const int64_t n = r % 64;
    for (int64_t j0 = 0; j0 < dp; j0 += 16) {
      for (int t = 0; t < 16; ++t) {
        const int64_t j = j0 + t;
        const float f = j < d ? xr[j] : 0.0f;
        std::uint32_t u;
        std::memcpy(&u, &f, 4);
        u += 0x7fffu + ((u >> 16) & 1u);  // finite inputs (validated): round to nearest even
        const std::uint32_t hu = u & 0xffff0000u;
        float hf;
        std::memcpy(&hf, &hu, 4);
        const float lf = f - hf;
        a[t] += f * f;
        l[t] += lf * lf;
        h[t] += hf * hf;
        hb[t] = (std::uint16_t)(u >> 16);
      }
      if (packed) {
        for (int t = 0; t < 16; ++t) o[((j0 + t) / 2 * 64 + n) * 2 + (t & 1)] = hb[t];
      } else {
        std::memcpy(o + j0, hb, sizeof(hb));
      }
    }
    double sa = 0, sl = 0, sh = 0;
    for (int t = 0; t < 16; ++t) {
      sa += a[t];
      sl += l[t];
      sh += h[t];
    }
    norms[r * 3 + 0] = std::sqrt(sa * up);
    norms[r * 3 + 1] = std::sqrt(sl * up);
    norms[r * 3 + 2] = std::sqrt(sh * up);
  }
}

void lowp_topk(std::uintptr_t q_, int64_t ldq, std::uintptr_t g_, int64_t ldg, int64_t Q, int64_t G, int64_t d,
               int64_t k, std::uintptr_t out_s, std::uintptr_t out_i, std::uintptr_t q_norms, std::uintptr_t g_max,
               int64_t tile_m, int64_t num_splits) {
  ccr::lowp::check();
  CCR_CHECK_ARG(Q >= 1 && G >= 1 && d >= 1, "lowp_topk: Q, G and d must be >= 1");
  CCR_CHECK_ARG(k >= 1 && k <= G, "lowp_topk: k must be in [1, G]");
  CCR_CHECK_ARG(ldq >= d && ldg >= d, "lowp_topk: row strides must be >= d");
  const float* q = ccr::as_ptr<const float>(q_);
  const float* g = ccr::as_ptr<const float>(g_);
  const int nt = ccr::omp_threads();
  const int64_t B = ccr::lowp::kBlock;
  const int64_t dp = (d + B - 1) / B * B;
  const int64_t R = std::min<int64_t>(tile_m > 0 ? tile_m : 256, Q);
  const int64_t nqb = (Q + R - 1) / R;
  const int64_t Gp = (G + B - 1) / B * B, ngb = Gp / B;
  // operands: q as bf16 rows [Q, dp]; the gallery packed per 64-row block (VNNI-2), zero rows up to Gp (value-initialised)
  std::vector<bf16> qh((size_t)Q * dp), gpack((size_t)Gp * dp);
  std::vector<double> gn((size_t)G * 3);
  split_rows(q, ldq, Q, d, dp, qh.data(), false, ccr::as_ptr<double>(q_norms));
  split_rows(g, ldg, G, d, dp, gpack.data(), true, gn.data());
  double* gm = ccr::as_ptr<double>(g_max);
  gm[0] = gm[1] = gm[2] = 0;
  for (int64_t r = 0; r < G; ++r)
    for (int t = 0; t < 3; ++t) gm[t] = std::max(gm[t], gn[r * 3 + t]);

  int64_t splits = num_splits > 0 ? num_splits : (nqb >= 2 * nt ? 1 : std::max<int64_t>(1, (2 * nt + nqb - 1) / nqb));
  splits = std::max<int64_t>(1, std::min(splits, ngb));
  float* os = ccr::as_ptr<float>(out_s);
  int64_t* oi = ccr::as_ptr<int64_t>(out_i);
  std::vector<float> ps(splits > 1 ? (size_t)splits * Q * k : 0);
  std::vector<int64_t> pi(splits > 1 ? (size_t)splits * Q * k : 0), pn(splits > 1 ? (size_t)splits * Q : 0);
  std::string err;
  bool failed = false;
#pragma omp parallel num_threads(nt)
  {
    try {
      std::vector<float> tile((size_t)R * kWide);
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < nqb * splits; ++task) {
        const int64_t qb = task / splits, sp = task % splits;
        const int64_t q0 = qb * R, nq = std::min(R, Q - q0);
        const int64_t b0 = sp * ngb / splits, b1 = (sp + 1) * ngb / splits;
        float* hs = splits > 1 ? ps.data() + ((size_t)sp * Q + q0) * k : os + q0 * k;
        int64_t* hi = splits > 1 ? pi.data() + ((size_t)sp * Q + q0) * k : oi + q0 * k;
        std::vector<FHeap> heaps;
        heaps.reserve(nq);
        for (int64_t r = 0; r < nq; ++r) heaps.push_back(FHeap{hs + r * k, hi + r * k, 0, k});
        for (int64_t b = b0; b < b1; b += kWide / B) {  // kWide columns per epilogue pass
          const int64_t nb = std::min(kWide / B, b1 - b), c0 = b * B, w = std::min(nb * B, G - c0);
          for (int64_t j = 0; j < nb; ++j)
            ccr::lowp::brgemm(nq, B, dp, dp, B, kWide, false, qh.data() + q0 * dp,
                              gpack.data() + (size_t)(b + j) * B * dp, tile.data() + j * B);
          for (int64_t r = 0; r < nq; ++r) offer_row(heaps[r], tile.data() + r * kWide, w, c0);
        }
        if (splits > 1) {
          for (int64_t r = 0; r < nq; ++r) pn[(size_t)sp * Q + q0 + r] = heaps[r].n;
        } else {
          for (int64_t r = 0; r < nq; ++r) heaps[r].sort_desc();
        }
      }
      ccr::lowp::release();
      if (splits > 1) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < Q; ++i) {
          FHeap h{os + i * k, oi + i * k, 0, k};
          for (int64_t sp = 0; sp < splits; ++sp) {
            const size_t base = ((size_t)sp * Q + i) * k;
            for (int64_t j = 0; j < pn[(size_t)sp * Q + i]; ++j) h.offer(ps[base + j], pi[base + j]);
          }
          h.sort_desc();
        }
      }
    } catch (const std::exception& e) {
#pragma omp critical(ccr_exact_err)
      {
        failed = true;
        err = e.what();
      }
    }
  }
  if (failed) throw std::runtime_error("lowp_topk: " + err);
}

bool lowp_ready() { return ccr::lowp::g_brgemm_bf16 != nullptr; }
#endif  // CCR_EXACT_LOWP

}  // namespace

void register_cpu_exact(py::module_& m) {
  m.def("exact_rescore", &exact_rescore,
        "out[Q, n] float64 = dot64(q_i, g_idx[i, j]) (idx -1 -> -inf): the one float64 score of the exact ops.",
        py::arg("q"), py::arg("ldq"), py::arg("g"), py::arg("ldg"), py::arg("Q"), py::arg("G"), py::arg("d"),
        py::arg("idx"), py::arg("n"), py::arg("out"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
  m.def("exact_topk_f64", &exact_topk_f64,
        "Float64 top-k (dot64 scores, ties -> lower index) of each query over the whole gallery.", py::arg("q"),
        py::arg("ldq"), py::arg("g"), py::arg("ldg"), py::arg("Q"), py::arg("G"), py::arg("d"), py::arg("k"),
        py::arg("out_scores"), py::arg("out_indices"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
#ifdef CCR_EXACT_LOWP
  m.def("lowp_topk", &lowp_topk,
        "bf16 candidate top-k (fp32 accumulation, fp32 scores) of float32 q [Q, d] over g [G, d]; writes "
        "out_scores[Q, k] float32, out_indices[Q, k] int64, q_norms[Q, 3] and g_max[3] float64.",
        py::arg("q"), py::arg("ldq"), py::arg("g"), py::arg("ldg"), py::arg("Q"), py::arg("G"), py::arg("d"),
        py::arg("k"), py::arg("out_scores"), py::arg("out_indices"), py::arg("q_norms"), py::arg("g_max"),
        py::arg("tile_m") = 0, py::arg("num_splits") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("lowp_ready", &lowp_ready, "Whether a bf16 GEMM is registered (ccr_fast.backends.blas._lowp).");
#endif
}

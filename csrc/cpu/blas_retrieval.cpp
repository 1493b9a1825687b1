// CPU kernels of the "blas" backend for top-k, target ranks, the VSE++ triplet forward and similarity: a vendor
// GEMM tile (blas_gemm.h) followed by a fused selection / counting / hardest-negative epilogue. See blas.cpp for
// the threading rule (OpenMP over tiles, the GEMM single-threaded) and docs/interop.md for the contracts.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "blas_gemm.h"
#include "common.h"
#include "cpu_util.h"
#include "exact64.h"

namespace py = pybind11;

namespace {

using std::int64_t;
using namespace ccr::blas;

constexpr int64_t kRows = 256;   // query rows per tile
constexpr int64_t kCols = 1024;  // gallery rows per tile (a 256 x 1024 fp32 tile is 1 MiB)

#define CCR_BLAS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))

// ------------------------------------------------------------------------------------------------ top-k
// Bounded heap over external storage, root = worst kept candidate under (score desc, index asc).
template <typename T>
struct Heap {
  T* s;
  int64_t* ix;
  int64_t n, k;
  bool worse(int64_t p, int64_t q) const { return ccr::better(s[q], ix[q], s[p], ix[p]); }
  void sw(int64_t p, int64_t q) {
    std::swap(s[p], s[q]);
    std::swap(ix[p], ix[q]);
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
  void offer(T v, int64_t i) {
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
  T threshold() const { return n < k ? -std::numeric_limits<T>::infinity() : s[0]; }
  void sort_desc() {  // heap sort: worst to the back
    for (int64_t m = n; m > 1; --m) {
      sw(0, m - 1);
      down(0, m - 1);
    }
  }
};

// Offer one row of scores (gallery indices c0 + j) to a heap; a threshold compare drops almost every score.
// NaN scores: never offered (a NaN query makes every score NaN; the Python layer rejects NaN inputs).
CCR_BLAS_CLONES void offer_row(Heap<float>& h, const float* s, int64_t W, int64_t c0) {
  int64_t j = 0;
  while (j < W) {
    float t = h.threshold();
    const int64_t end = std::min(W, j + 64);
    bool any = false;
    for (int64_t jj = j; jj < end; ++jj) any |= s[jj] >= t;
    if (any) {
      for (int64_t jj = j; jj < end; ++jj)
        if (s[jj] >= t) {
          h.offer(s[jj], c0 + jj);
          t = h.threshold();
        }
    }
    j = end;
  }
}
void offer_row(Heap<double>& h, const double* s, int64_t W, int64_t c0) {
  for (int64_t j = 0; j < W; ++j)
    if (s[j] >= h.threshold()) h.offer(s[j], c0 + j);
}

template <typename T>
void topk_impl(const T* q, int64_t ldq, const T* g, int64_t ldg, int64_t Q, int64_t G, int64_t d, int64_t k, T* out_s,
               int64_t* out_i, int64_t tile_m, int64_t tile_n, int64_t num_splits) {
  const int nt = ccr::omp_threads();
  const int64_t R = std::min(tile_m > 0 ? tile_m : kRows, Q), W = std::min(tile_n > 0 ? tile_n : kCols, G);
  const int64_t nqb = (Q + R - 1) / R;
  int64_t splits = num_splits > 0 ? num_splits : (nqb >= 2 * nt ? 1 : std::max<int64_t>(1, (2 * nt + nqb - 1) / nqb));
  splits = std::max<int64_t>(1, std::min(splits, (G + W - 1) / W));
  // split s covers gallery tiles [s*tiles/splits, (s+1)*tiles/splits)
  const int64_t ntiles = (G + W - 1) / W;
  std::vector<T> ps(splits > 1 ? (size_t)splits * Q * k : 0);
  std::vector<int64_t> pi(splits > 1 ? (size_t)splits * Q * k : 0);
  std::vector<int64_t> pn(splits > 1 ? (size_t)splits * Q : 0);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf((size_t)R * W);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < nqb * splits; ++task) {
      const int64_t qb = task / splits, sp = task % splits;
      const int64_t q0 = qb * R, nq = std::min(R, Q - q0);
      const int64_t t0 = sp * ntiles / splits, t1 = (sp + 1) * ntiles / splits;
      T* hs = splits > 1 ? ps.data() + ((size_t)sp * Q + q0) * k : out_s + q0 * k;
      int64_t* hi = splits > 1 ? pi.data() + ((size_t)sp * Q + q0) * k : out_i + q0 * k;
      std::vector<Heap<T>> heaps;
      heaps.reserve(nq);
      for (int64_t r = 0; r < nq; ++r) heaps.push_back(Heap<T>{hs + r * k, hi + r * k, 0, k});
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * W, w = std::min(W, G - c0);
        score_tile(q + q0 * ldq, ldq, g + c0 * ldg, ldg, d, nq, w, buf.data(), w);
        for (int64_t r = 0; r < nq; ++r) offer_row(heaps[r], buf.data() + r * w, w, c0);
      }
      if (splits > 1) {
        for (int64_t r = 0; r < nq; ++r) pn[(size_t)sp * Q + q0 + r] = heaps[r].n;
      } else {
        for (int64_t r = 0; r < nq; ++r) heaps[r].sort_desc();
      }
    }
    if (splits > 1) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < Q; ++i) {
        Heap<T> h{out_s + i * k, out_i + i * k, 0, k};
        for (int64_t sp = 0; sp < splits; ++sp) {
          const size_t base = ((size_t)sp * Q + i) * k;
          for (int64_t j = 0; j < pn[(size_t)sp * Q + i]; ++j) h.offer(ps[base + j], pi[base + j]);
        }
        h.sort_desc();
      }
    }
  }
}

void blas_topk(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d, int64_t k,
               std::uintptr_t out_scores, std::uintptr_t out_indices, int dtype, int64_t tile_m, int64_t tile_n,
               int64_t num_splits) {
  check_gemm(dtype);
  CCR_CHECK_ARG(Q >= 1 && G >= 1 && d >= 1, "blas topk: Q, G and d must be >= 1");
  CCR_CHECK_ARG(k >= 1 && k <= G, "blas topk: k must be in [1, G], got k=" + std::to_string(k));
  CCR_CHECK_ARG(ldq >= d && ldg >= d, "blas topk: row strides must be >= d");
  check_int(ldq, "ldq");
  check_int(ldg, "ldg");
  if (dtype == ccr::kFloat32)
    topk_impl<float>(ccr::as_ptr<const float>(q), ldq, ccr::as_ptr<const float>(g), ldg, Q, G, d, k,
                     ccr::as_ptr<float>(out_scores), ccr::as_ptr<int64_t>(out_indices), tile_m, tile_n, num_splits);
  else
    topk_impl<double>(ccr::as_ptr<const double>(q), ldq, ccr::as_ptr<const double>(g), ldg, Q, G, d, k,
                      ccr::as_ptr<double>(out_scores), ccr::as_ptr<int64_t>(out_indices), tile_m, tile_n, num_splits);
}

// ------------------------------------------------------------------------------------------------ ranks
// Exact in float64 (docs/exactness.md). The target score est = dot64(q, g_t) (the one float64 score); per query a
// band half-width b bounds |GEMM score - float64 score| for every gallery row (gamma_d in T of the GEMM plus
// gamma_d in float64 for dot64, times ||q|| max ||g||). A GEMM score above est + b is above the target in float64,
// one below est - b is below; the few rows in between are re-scored with dot64 and compared with the tie rule.
// Queries whose scores could overflow T are counted entirely in float64.
template <typename T>
struct RankState {
  int64_t above = 0;
  std::vector<int64_t> near;
};

CCR_BLAS_CLONES int64_t count_band(const float* s, int64_t W, float lo, float hi, int64_t* first_in_band) {
  int64_t above = 0;
  bool band = false;
  for (int64_t j = 0; j < W; ++j) {
    above += s[j] > hi;
    band |= (s[j] >= lo) & (s[j] <= hi);
  }
  *first_in_band = band ? 0 : -1;
  return above;
}
int64_t count_band(const double* s, int64_t W, double lo, double hi, int64_t* first_in_band) {
  int64_t above = 0;
  bool band = false;
  for (int64_t j = 0; j < W; ++j) {
    above += s[j] > hi;
    band |= (s[j] >= lo) && (s[j] <= hi);
  }
  *first_in_band = band ? 0 : -1;
  return above;
}

template <typename T>
void ranks_impl(const T* q, int64_t ldq, const T* g, int64_t ldg, int64_t Q, int64_t G, int64_t d, const int64_t* tg,
                int64_t Tn, int64_t* out_min, int64_t* out_all, int64_t num_splits) {
  const int nt = ccr::omp_threads();
  const int64_t R = std::min(kRows, Q), W = std::min(kCols, G);
  const int64_t nqb = (Q + R - 1) / R, ntiles = (G + W - 1) / W;
  int64_t splits = num_splits > 0 ? num_splits : (nqb >= 2 * nt ? 1 : std::max<int64_t>(1, (2 * nt + nqb - 1) / nqb));
  splits = std::max<int64_t>(1, std::min(splits, ntiles));
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const double rel = (ccr::gamma_n((double)d + 1, u) + 2 * ccr::gamma_n((double)d + 8, 0x1p-53)) * (1 + 1e-9);
  const double tiny = 8.0 * (double)(d + 1) * (double)std::numeric_limits<T>::min();
  double gmax = 0;
#pragma omp parallel for reduction(max : gmax) schedule(static)
  for (int64_t c = 0; c < G; ++c) gmax = std::max(gmax, std::sqrt(ccr::dot64(g + c * ldg, g + c * ldg, d)));
  gmax *= 1 + 1e-12;
  std::vector<double> est((size_t)Q * Tn, 0.0), band((size_t)Q, 0.0);
  std::vector<char> full((size_t)Q, 0);
  for (int64_t i = 0; i < Q; ++i) {
    const double qn = std::sqrt(ccr::dot64(q + i * ldq, q + i * ldq, d)) * (1 + 1e-12);
    band[i] = rel * qn * gmax + tiny;
    full[i] = !(qn * gmax < 0.25 * (double)std::numeric_limits<T>::max());  // T scores could overflow
    for (int64_t t = 0; t < Tn; ++t) {
      const int64_t c = tg[i * Tn + t];
      if (c >= 0) est[(size_t)i * Tn + t] = ccr::dot64(q + i * ldq, g + c * ldg, d);
    }
  }
  std::vector<RankState<T>> st((size_t)splits * Q * Tn);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf((size_t)R * W);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < nqb * splits; ++task) {
      const int64_t qb = task / splits, sp = task % splits;
      const int64_t q0 = qb * R, nq = std::min(R, Q - q0);
      const int64_t t0 = sp * ntiles / splits, t1 = (sp + 1) * ntiles / splits;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * W, w = std::min(W, G - c0);
        score_tile(q + q0 * ldq, ldq, g + c0 * ldg, ldg, d, nq, w, buf.data(), w);
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t i = q0 + r;
          if (full[i]) continue;
          const T* s = buf.data() + r * w;
          for (int64_t tt = 0; tt < Tn; ++tt) {
            const int64_t c = tg[i * Tn + tt];
            if (c < 0) continue;
            RankState<T>& rs = st[((size_t)sp * Q + i) * Tn + tt];
            const double e = est[(size_t)i * Tn + tt], b = band[i];
            // lo/hi rounded outwards to T
            T lo = (T)(e - b), hi = (T)(e + b);
            if ((double)lo > e - b) lo = std::nextafter(lo, -std::numeric_limits<T>::infinity());
            if ((double)hi < e + b) hi = std::nextafter(hi, std::numeric_limits<T>::infinity());
            int64_t in_band;
            rs.above += count_band(s, w, lo, hi, &in_band);
            if (in_band >= 0)
              for (int64_t j = 0; j < w; ++j)
                if (s[j] >= lo && s[j] <= hi) rs.near.push_back(c0 + j);
          }
        }
      }
    }
  }
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < Q; ++i) {
    int64_t best = -1;
    for (int64_t tt = 0; tt < Tn; ++tt) {
      const int64_t c = tg[i * Tn + tt];
      int64_t rank = -1;
      if (c >= 0) {
        const double sc = est[(size_t)i * Tn + tt];
        rank = 0;
        auto count = [&](int64_t o) {
          const double so = ccr::dot64(q + i * ldq, g + o * ldg, d);
          return (so > sc || (so == sc && o < c)) ? 1 : 0;
        };
        if (full[i]) {
          for (int64_t o = 0; o < G; ++o) rank += count(o);
        } else {
          for (int64_t sp = 0; sp < splits; ++sp) {
            const RankState<T>& rs = st[((size_t)sp * Q + i) * Tn + tt];
            rank += rs.above;
            for (const int64_t o : rs.near) rank += count(o);
          }
        }
        if (best < 0 || rank < best) best = rank;
      }
      if (out_all) out_all[i * Tn + tt] = rank;
    }
    out_min[i] = best;
  }
}

void blas_target_ranks(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
                       std::uintptr_t targets, int64_t T, std::uintptr_t out_ranks, std::uintptr_t out_all_ranks,
                       int dtype, int64_t num_splits) {
  check_gemm(dtype);
  CCR_CHECK_ARG(Q >= 1 && G >= 1 && d >= 1 && T >= 1, "blas target_ranks: Q, G, d and T must be >= 1");
  CCR_CHECK_ARG(ldq >= d && ldg >= d, "blas target_ranks: row strides must be >= d");
  check_int(ldq, "ldq");
  check_int(ldg, "ldg");
  const auto* tg = ccr::as_ptr<const int64_t>(targets);
  for (int64_t n = 0; n < Q * T; ++n)
    CCR_CHECK_ARG(tg[n] >= -1 && tg[n] < G, "blas target_ranks: targets must be in [-1, G=" + std::to_string(G) +
                                                "), got " + std::to_string(tg[n]));
  if (dtype == ccr::kFloat32)
    ranks_impl<float>(ccr::as_ptr<const float>(q), ldq, ccr::as_ptr<const float>(g), ldg, Q, G, d, tg, T,
                      ccr::as_ptr<int64_t>(out_ranks), ccr::as_ptr<int64_t>(out_all_ranks), num_splits);
  else
    ranks_impl<double>(ccr::as_ptr<const double>(q), ldq, ccr::as_ptr<const double>(g), ldg, Q, G, d, tg, T,
                       ccr::as_ptr<int64_t>(out_ranks), ccr::as_ptr<int64_t>(out_all_ranks), num_splits);
}

// ------------------------------------------------------------------------------------------------ triplet forward
// S = b aᵀ (rows i: b_i, columns j: a_j). max_violation: hardest negative per row (j != i) and per column (i != j),
// ties to the lower index; else hinge sums with the diagonal computed first (same GEMM, diagonal tiles).
template <typename T>
void triplet_impl(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t n, int64_t d, T margin, bool maxv,
                  T* row_cost, T* col_cost, int64_t* row_idx, int64_t* col_idx) {
  const int nt = ccr::omp_threads();
  const int64_t R = std::min(kRows, n), W = std::min<int64_t>(512, n);
  const int64_t nrb = (n + R - 1) / R;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::vector<T> diag(n);
  // the diagonal from R x R GEMM tiles on the diagonal (no hinge needs more precision than the tile's own scores)
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf((size_t)R * R);
#pragma omp for schedule(dynamic, 1)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * R, m = std::min(R, n - r0);
      score_tile(b + r0 * ldb, ldb, a + r0 * lda, lda, d, m, m, buf.data(), m);
      for (int64_t r = 0; r < m; ++r) diag[r0 + r] = buf[r * m + r];
    }
  }
  std::vector<T> cbest((size_t)nt * n, maxv ? ninf : T(0));
  std::vector<int64_t> cidx((size_t)nt * n, -1);
#pragma omp parallel num_threads(nt)
  {
    const int tid = ccr::omp_thread_id();
    T* cb = cbest.data() + (size_t)tid * n;
    int64_t* ci = cidx.data() + (size_t)tid * n;
    std::vector<T> buf((size_t)R * W);
#pragma omp for schedule(dynamic, 1)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * R, m = std::min(R, n - r0);
      std::vector<T> rbest(m, maxv ? ninf : T(0));
      std::vector<int64_t> ridx(m, -1);
      for (int64_t c0 = 0; c0 < n; c0 += W) {
        const int64_t w = std::min(W, n - c0);
        score_tile(b + r0 * ldb, ldb, a + c0 * lda, lda, d, m, w, buf.data(), w);
        for (int64_t r = 0; r < m; ++r) {
          const int64_t i = r0 + r;
          const T* s = buf.data() + r * w;
          if (maxv) {
            T best = rbest[r];
            int64_t bi = ridx[r];
            for (int64_t j = 0; j < w; ++j) {
              const int64_t c = c0 + j;
              if (c == i) continue;
              if (s[j] > best || bi < 0 || (s[j] != s[j] && best == best)) {
                best = s[j];
                bi = c;
              }
              if (s[j] > cb[c] || ci[c] < 0 || (s[j] == cb[c] && i < ci[c])) {
                cb[c] = s[j];
                ci[c] = i;
              }
            }
            rbest[r] = best;
            ridx[r] = bi;
          } else {
            T acc = T(0);
            const T di = diag[i];
            for (int64_t j = 0; j < w; ++j) {
              const int64_t c = c0 + j;
              if (c == i) continue;
              acc += ccr::hinge(margin + s[j] - di);
              cb[c] += ccr::hinge(margin + s[j] - diag[c]);
            }
            rbest[r] += acc;
          }
        }
      }
      for (int64_t r = 0; r < m; ++r) {
        const int64_t i = r0 + r;
        if (maxv) {
          row_idx[i] = ridx[r];
          row_cost[i] = ccr::hinge(margin + rbest[r] - diag[i]);
        } else {
          row_cost[i] = rbest[r];
          row_idx[i] = -1;
        }
      }
    }
  }
  for (int64_t c = 0; c < n; ++c) {
    if (maxv) {
      T best = ninf;
      int64_t bi = -1;
      for (int t = 0; t < nt; ++t) {
        const T v = cbest[(size_t)t * n + c];
        const int64_t ii = cidx[(size_t)t * n + c];
        if (ii < 0) continue;
        if (bi < 0 || v > best || (v == best && ii < bi)) {
          best = v;
          bi = ii;
        }
      }
      col_idx[c] = bi;
      col_cost[c] = ccr::hinge(margin + best - diag[c]);
    } else {
      T acc = T(0);
      for (int t = 0; t < nt; ++t) acc += cbest[(size_t)t * n + c];
      col_cost[c] = acc;
      col_idx[c] = -1;
    }
  }
}

void blas_triplet_forward(std::uintptr_t a, int64_t lda, std::uintptr_t b, int64_t ldb, int64_t n, int64_t d,
                          double margin, bool max_violation, std::uintptr_t row_cost, std::uintptr_t col_cost,
                          std::uintptr_t row_idx, std::uintptr_t col_idx, int dtype) {
  check_gemm(dtype);
  CCR_CHECK_ARG(n >= 2 && d >= 1, "blas triplet: need B >= 2 and d >= 1, got B=" + std::to_string(n));
  CCR_CHECK_ARG(lda >= d && ldb >= d, "blas triplet: row strides must be >= d");
  check_int(lda, "lda");
  check_int(ldb, "ldb");
  if (dtype == ccr::kFloat32)
    triplet_impl<float>(ccr::as_ptr<const float>(a), lda, ccr::as_ptr<const float>(b), ldb, n, d, (float)margin,
                        max_violation, ccr::as_ptr<float>(row_cost), ccr::as_ptr<float>(col_cost),
                        ccr::as_ptr<int64_t>(row_idx), ccr::as_ptr<int64_t>(col_idx));
  else
    triplet_impl<double>(ccr::as_ptr<const double>(a), lda, ccr::as_ptr<const double>(b), ldb, n, d, margin,
                         max_violation, ccr::as_ptr<double>(row_cost), ccr::as_ptr<double>(col_cost),
                         ccr::as_ptr<int64_t>(row_idx), ccr::as_ptr<int64_t>(col_idx));
}

// ------------------------------------------------------------------------------------------------ similarity / gemm
template <typename T>
void sim_impl(const T* q, int64_t ldq, const T* g, int64_t ldg, int64_t Q, int64_t G, int64_t d, T* out, int64_t ldo) {
  const int nt = ccr::omp_threads();
  const int64_t R = std::min(kRows, Q), W = std::min(kCols, G);
  const int64_t nqb = (Q + R - 1) / R, ntiles = (G + W - 1) / W;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < nqb * ntiles; ++task) {
    const int64_t q0 = (task / ntiles) * R, c0 = (task % ntiles) * W;
    score_tile(q + q0 * ldq, ldq, g + c0 * ldg, ldg, d, std::min(R, Q - q0), std::min(W, G - c0), out + q0 * ldo + c0,
               ldo);
  }
}

void blas_similarity(std::uintptr_t q, std::uintptr_t g, int64_t Q, int64_t G, int64_t d, int64_t ldq, int64_t ldg,
                     int dtype, std::uintptr_t out, int64_t ldo) {
  check_gemm(dtype);
  CCR_CHECK_ARG(Q >= 1 && G >= 1 && d >= 1 && ldq >= d && ldg >= d && ldo >= G, "blas similarity: bad sizes");
  check_int(ldq, "ldq");
  check_int(ldg, "ldg");
  check_int(ldo, "ldo");
  if (dtype == ccr::kFloat32)
    sim_impl<float>(ccr::as_ptr<const float>(q), ldq, ccr::as_ptr<const float>(g), ldg, Q, G, d, ccr::as_ptr<float>(out),
                    ldo);
  else
    sim_impl<double>(ccr::as_ptr<const double>(q), ldq, ccr::as_ptr<const double>(g), ldg, Q, G, d,
                     ccr::as_ptr<double>(out), ldo);
}

// C[M, N] = op(A) op(B) (row-major), parallel over row blocks of C: the GEMM floor of the benchmarks.
template <typename T>
void gemm_impl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
               T* C, int64_t ldc) {
  const int nt = ccr::omp_threads();
  const int64_t R = std::max<int64_t>(1, std::min<int64_t>(256, (M + nt - 1) / nt));
  const int64_t nb = (M + R - 1) / R;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t r0 = b * R, m = std::min(R, M - r0);
    gemm(ta, tb, m, N, K, T(1), ta ? A + r0 : A + r0 * lda, lda, B, ldb, T(0), C + r0 * ldc, ldc);
  }
}

void blas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, std::uintptr_t A, int64_t lda, std::uintptr_t B,
               int64_t ldb, std::uintptr_t C, int64_t ldc, int dtype) {
  check_gemm(dtype);
  CCR_CHECK_ARG(M >= 1 && N >= 1 && K >= 1, "blas_gemm: M, N, K must be >= 1");
  check_int(lda, "lda");
  check_int(ldb, "ldb");
  check_int(ldc, "ldc");
  check_int(K, "K");
  if (dtype == ccr::kFloat32)
    gemm_impl<float>(ta, tb, M, N, K, ccr::as_ptr<const float>(A), lda, ccr::as_ptr<const float>(B), ldb,
                     ccr::as_ptr<float>(C), ldc);
  else
    gemm_impl<double>(ta, tb, M, N, K, ccr::as_ptr<const double>(A), lda, ccr::as_ptr<const double>(B), ldb,
                      ccr::as_ptr<double>(C), ldc);
}

}  // namespace

void register_cpu_blas_retrieval(py::module_& m) {
  m.def("blas_topk", &blas_topk,
        "Top-k over GEMM tiles: scores[Q, k] / indices[Q, k], sorted descending, ties -> lower gallery index. "
        "tile_m/tile_n 0 = default; num_splits 0 = automatic (> 1 forces the split-and-merge path).",
        py::arg("q"), py::arg("ldq"), py::arg("g"), py::arg("ldg"), py::arg("Q"), py::arg("G"), py::arg("d"),
        py::arg("k"), py::arg("out_scores"), py::arg("out_indices"), py::arg("dtype"), py::arg("tile_m") = 0,
        py::arg("tile_n") = 0, py::arg("num_splits") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("blas_target_ranks", &blas_target_ranks,
        "Target ranks over GEMM tiles (docs/interop.md): ranks[Q] and, when out_all_ranks != 0, all_ranks[Q, T].",
        py::arg("q"), py::arg("ldq"), py::arg("g"), py::arg("ldg"), py::arg("Q"), py::arg("G"), py::arg("d"),
        py::arg("targets"), py::arg("T"), py::arg("out_ranks"), py::arg("out_all_ranks"), py::arg("dtype"),
        py::arg("num_splits") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("blas_triplet_forward", &blas_triplet_forward,
        "VSE++ triplet forward over GEMM tiles of S = b aᵀ: row/col costs and hardest-negative indices.",
        py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"), py::arg("n"), py::arg("d"), py::arg("margin"),
        py::arg("max_violation"), py::arg("row_cost"), py::arg("col_cost"), py::arg("row_idx"), py::arg("col_idx"),
        py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
  m.def("blas_gemm", &blas_gemm,
        "C[M, N] = op(A) op(B) (row-major; op = transpose when ta/tb) through the registered GEMM, parallel over "
        "row blocks of C (the benchmarks' GEMM floor).",
        py::arg("ta"), py::arg("tb"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("A"), py::arg("lda"),
        py::arg("B"), py::arg("ldb"), py::arg("C"), py::arg("ldc"), py::arg("dtype"),
        py::call_guard<py::gil_scoped_release>());
  m.def("blas_similarity", &blas_similarity, "scores[Q, G] = q gᵀ over GEMM tiles.", py::arg("q"), py::arg("g"),
        py::arg("Q"), py::arg("G"), py::arg("d"), py::arg("ldq"), py::arg("ldg"), py::arg("dtype"), py::arg("out"),
        py::arg("ldo"), py::call_guard<py::gil_scoped_release>());
}

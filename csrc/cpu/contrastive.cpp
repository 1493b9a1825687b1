// CPU (C++17 + OpenMP) kernels of the contrastive op family. Contract: docs/interop.md ("contrastive").
//
// Z = scale * x y^T (M x N) is never materialised: it is produced one TM x TN tile at a time into a per-thread
// buffer (O(TM*TN) memory per thread) by ccr::score_tile, and the backward's dx += dZ y, dy += dZ^T x are
// rank-K updates by ccr::gemm_acc (gemm_tile.h, the register-blocked building block of every CPU family).
//
// Forward (one pass over the tiles, grid = row tiles, schedule(static)):
//   * row LSE: online (max, sum-exp) per row, owned by the thread that owns the row tile;
//   * column LSE: every thread keeps its own partial (max, sum-exp) per column ([threads, N] buffers); the
//     partials are merged in thread order after the parallel loop (deterministic for a fixed thread count);
//   * pos_row / pos_col: the positives of a row form one contiguous column range (the positive rule is
//     monotone in c), so only that range is visited; pos_col uses per-thread partial sums like the column LSE.
// Backward, fused (default when the [threads - 1, N, d] dy partials fit 256 MiB): one row-owned pass recomputes
// each tile once, forms dZ, dx_tile += dZ y_tile and the thread's own dy partial += dZ^T x_tile; the partials
// are summed in thread order afterwards (deterministic for a fixed thread count). Otherwise two passes (no
// atomics, no races):
//   * row-owned pass (grid = row tiles): recompute the tile, form dZ, dx[r] += dZ[r,:] y, and the per-thread
//     partial sums of dZ * (x y^T) for dscale;
//   * column-owned pass (grid = column tiles): recompute the tile transposed (S^T = y_tile x_tile^T), form
//     dZ^T row by row, dy_tile += dZ^T x_tile.
// Memory: O((M + N) * d) for inputs/outputs plus O(threads * (N + TM*TN)) workspace (+ the fused backward's
// dy partials, at most 256 MiB).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "gemm_tile.h"

#ifdef CCR_FAST_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using std::int64_t;

namespace ccr {

namespace {

// Default tile sizes: a 64-row x-tile (64*d elements) stays in L1/L2 while the 256-column y-tile streams
// through; the 64x256 score tile (64 KiB in float32) fits L2.
constexpr int64_t kTileM = 64;
constexpr int64_t kTileN = 256;

inline int thread_id() {
#ifdef CCR_FAST_WITH_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int max_threads() {
#ifdef CCR_FAST_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// exp(x) for the softmax sums, written so that OpenMP SIMD loops vectorise it (no libm call). The argument is
// clamped to [-87, 88] (float) / [-708, 709] (double): the results stay finite, so a zero coefficient times
// exp(...) is 0 even where the matching LSE is unspecified, and an exp(-87) ~ 1e-38 in place of an underflow
// is far below the rounding of any sum that also holds exp(0) = 1.
// float: 2^n * p(r) with n = round(x log2 e), r = x - n ln 2 (Cody-Waite split), p the degree-7 Taylor
// polynomial (|r| <= ln2/2 -> truncation error < 5e-9, under half an ulp). double: std::exp.
// Always inlined, so that the vectoriser expands it inside each (AVX2 / baseline) clone of the loops below.
inline __attribute__((always_inline)) float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;  // NaN passes both clamps (as with std::min/max); plain selects vectorise
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  std::int32_t ti, si;
  std::memcpy(&ti, &t, 4);
  std::memcpy(&si, &shifter, 4);
  const std::int32_t bits = (ti - si + 127) << 23;  // 2^n
  float two_n;
  std::memcpy(&two_n, &bits, 4);
  return p * two_n;
}

// The float loops below run 8 lanes at a time on GCC vector extensions (vector bit casts are free, unlike the
// scalar memcpy, which stops the vectoriser); the same code becomes AVX2 or SSE2 in the two clones.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // internal, always-inlined helpers: the vector-argument ABI never applies
#endif
typedef float v8f __attribute__((vector_size(32)));
typedef std::int32_t v8i __attribute__((vector_size(32)));
inline __attribute__((always_inline)) v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
inline __attribute__((always_inline)) v8f bcast8(float a) { return v8f{} + a; }
inline __attribute__((always_inline)) float hsum8(v8f v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}
// fast_exp(float) on 8 lanes, the same formula.
inline __attribute__((always_inline)) v8f fast_exp(v8f x) {
  const v8f lo = bcast8(-87.0f), hi = bcast8(88.0f), shifter = bcast8(12582912.0f);
  x = x < lo ? lo : x;  // NaN lanes pass both clamps
  x = x > hi ? hi : x;
  const v8f t = x * 1.44269504088896341f + shifter;
  const v8f n = t - shifter;
  const v8f r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  v8f p = bcast8(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v8i bits = ((v8i)t - (v8i)shifter + 127) << 23;  // 2^n
  return p * (v8f)bits;
}

inline __attribute__((always_inline)) double fast_exp(double x) { return std::exp(std::min(std::max(x, -708.0), 709.0)); }

// Positive columns of a row with key g, clipped to the tile [c0, c0 + nj): local indices [lo, hi).
inline void positive_range(int64_t g, int64_t col_off, int64_t col_div, int64_t c0, int64_t nj, int64_t* lo,
                           int64_t* hi) {
  const int64_t first = g * col_div - col_off;  // first column c with (c + col_off) / col_div == g
  *lo = std::max<int64_t>(first - c0, 0);
  *hi = std::min<int64_t>(first + col_div - c0, nj);
  if (*hi < *lo) *hi = *lo;
}

void check_common(int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy, int dtype, int64_t row_off,
                  int64_t row_div, int64_t col_off, int64_t col_div) {
  CCR_CHECK_ARG(M >= 1 && N >= 1 && d >= 1, "contrastive: M, N and d must be >= 1, got M=" + std::to_string(M) +
                                                " N=" + std::to_string(N) + " d=" + std::to_string(d));
  CCR_CHECK_ARG(ldx >= d && ldy >= d, "contrastive: row strides ldx/ldy must be >= d, got ldx=" +
                                          std::to_string(ldx) + " ldy=" + std::to_string(ldy) +
                                          " d=" + std::to_string(d));
  CCR_CHECK_ARG(dtype == kFloat32 || dtype == kFloat64,
                std::string("contrastive CPU kernels take float32 or float64, got dtype ") + dtype_name(dtype));
  CCR_CHECK_ARG(row_off >= 0 && col_off >= 0 && row_div >= 1 && col_div >= 1,
                "contrastive: need row_off, col_off >= 0 and row_div, col_div >= 1, got (" + std::to_string(row_off) +
                    ", " + std::to_string(row_div) + ", " + std::to_string(col_off) + ", " +
                    std::to_string(col_div) + ")");
}

// Hot loops of the softmax parts, compiled for AVX2+FMA and the baseline ISA (picked at load time).
//   scale_max:  z[j] *= scale in place, returns max(m, max_j z[j])
//   exp_sum:    sum_j exp(z[j] - m)
//   col_update: online (max, sum-exp) of the columns of one tile S (mi x nj), vectorised across columns
//   dz_row:     s[j] <- rc*exp(scale*s[j] - lr) + cc[j]*exp(scale*s[j] - lc[j]), returns sum_j s_new[j] * s_old[j]
//               (the dscale partial, before the positive correction). terms: kBoth, kScalarOnly (cc == 0) or
//               kVectorOnly (rc == 0). The row-owned pass calls it on rows of dZ (rc, lr = row coefficient and
//               LSE), the column-owned pass on rows of dZ^T (rc, lr = the column's).
template <typename T>
inline __attribute__((always_inline)) T scale_max_body(T* z, int64_t n, T scale, T m) {
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) {
    z[j] *= scale;
    m = m < z[j] ? z[j] : m;
  }
  return m;
}

template <typename T>
inline __attribute__((always_inline)) T exp_sum_body(const T* z, int64_t n, T m) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += fast_exp(z[j] - m);
  return s;
}

inline __attribute__((always_inline)) float exp_sum_body(const float* z, int64_t n, float m) {
  const v8f mv = bcast8(m);
  v8f acc = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) acc += fast_exp(load8(z + j) - mv);
  float s = hsum8(acc);
  for (; j < n; ++j) s += fast_exp(z[j] - m);
  return s;
}

// csum[j] += exp(s[j] - cmax[j]), j < n.
template <typename T>
inline __attribute__((always_inline)) void add_exp_diff(T* csum, const T* s, const T* cmax, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) csum[j] += fast_exp(s[j] - cmax[j]);
}
inline __attribute__((always_inline)) void add_exp_diff(float* csum, const float* s, const float* cmax, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store8(csum + j, load8(csum + j) + fast_exp(load8(s + j) - load8(cmax + j)));
  for (; j < n; ++j) csum[j] += fast_exp(s[j] - cmax[j]);
}

template <typename T>
inline __attribute__((always_inline)) void col_update_body(const T* S, int64_t lds, int64_t mi, int64_t nj, T* cmax,
                                                           T* csum, T* scratch) {
  for (int64_t j = 0; j < nj; ++j) scratch[j] = cmax[j];
  for (int64_t i = 0; i < mi; ++i) {
    const T* si = S + i * lds;
#pragma omp simd
    for (int64_t j = 0; j < nj; ++j) scratch[j] = scratch[j] < si[j] ? si[j] : scratch[j];
  }
  for (int64_t j = 0; j < nj; ++j) {
    csum[j] *= std::exp(cmax[j] - scratch[j]);  // exp(-inf) = 0 on a column's first tile
    cmax[j] = scratch[j];
  }
  for (int64_t i = 0; i < mi; ++i) add_exp_diff(csum, S + i * lds, cmax, nj);
}

enum DzTerms : int { kBoth = 0, kScalarOnly = 1, kVectorOnly = 2 };

template <typename T>
inline __attribute__((always_inline)) T dz_row_body(T* s, int64_t nj, T scale, T rc, T lr, const T* cc,
                                                    const T* lc, int terms) {
  T acc = 0;
  if (terms == kBoth) {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < nj; ++j) {
      const T raw = s[j], z = scale * raw;
      const T g = rc * fast_exp(z - lr) + cc[j] * fast_exp(z - lc[j]);
      s[j] = g;
      acc += g * raw;
    }
  } else if (terms == kScalarOnly) {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < nj; ++j) {
      const T raw = s[j];
      const T g = rc * fast_exp(scale * raw - lr);
      s[j] = g;
      acc += g * raw;
    }
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < nj; ++j) {
      const T raw = s[j];
      const T g = cc[j] * fast_exp(scale * raw - lc[j]);
      s[j] = g;
      acc += g * raw;
    }
  }
  return acc;
}

inline __attribute__((always_inline)) float dz_row_body(float* s, int64_t nj, float scale, float rc, float lr,
                                                        const float* cc, const float* lc, int terms) {
  const v8f sv = bcast8(scale), rcv = bcast8(rc), lrv = bcast8(lr);
  v8f acc8 = {};
  int64_t j = 0;
  for (; j + 8 <= nj; j += 8) {
    const v8f raw = load8(s + j), z = sv * raw;
    v8f g;
    if (terms == kBoth)
      g = rcv * fast_exp(z - lrv) + load8(cc + j) * fast_exp(z - load8(lc + j));
    else if (terms == kScalarOnly)
      g = rcv * fast_exp(z - lrv);
    else
      g = load8(cc + j) * fast_exp(z - load8(lc + j));
    store8(s + j, g);
    acc8 += g * raw;
  }
  float acc = hsum8(acc8);
  for (; j < nj; ++j) {
    const float raw = s[j], z = scale * raw;
    float g;
    if (terms == kBoth)
      g = rc * fast_exp(z - lr) + cc[j] * fast_exp(z - lc[j]);
    else if (terms == kScalarOnly)
      g = rc * fast_exp(z - lr);
    else
      g = cc[j] * fast_exp(z - lc[j]);
    s[j] = g;
    acc += g * raw;
  }
  return acc;
}

#define CCR_CLONES __attribute__((target_clones("arch=haswell", "default")))
CCR_CLONES float scale_max(float* z, int64_t n, float scale, float m) { return scale_max_body(z, n, scale, m); }
CCR_CLONES double scale_max(double* z, int64_t n, double scale, double m) { return scale_max_body(z, n, scale, m); }
CCR_CLONES float exp_sum(const float* z, int64_t n, float m) { return exp_sum_body(z, n, m); }
CCR_CLONES double exp_sum(const double* z, int64_t n, double m) { return exp_sum_body(z, n, m); }
CCR_CLONES void col_update(const float* S, int64_t lds, int64_t mi, int64_t nj, float* cmax, float* csum,
                           float* scratch) {
  col_update_body(S, lds, mi, nj, cmax, csum, scratch);
}
CCR_CLONES void col_update(const double* S, int64_t lds, int64_t mi, int64_t nj, double* cmax, double* csum,
                           double* scratch) {
  col_update_body(S, lds, mi, nj, cmax, csum, scratch);
}
CCR_CLONES float dz_row(float* s, int64_t nj, float scale, float rc, float lr, const float* cc, const float* lc,
                        int terms) {
  return dz_row_body(s, nj, scale, rc, lr, cc, lc, terms);
}
CCR_CLONES double dz_row(double* s, int64_t nj, double scale, double rc, double lr, const double* cc,
                         const double* lc, int terms) {
  return dz_row_body(s, nj, scale, rc, lr, cc, lc, terms);
}
#undef CCR_CLONES

template <typename T>
void forward_impl(const T* x, const T* y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy, T scale,
                  int64_t row_off, int64_t row_div, int64_t col_off, int64_t col_div, bool compute_col, T* lse_row,
                  T* lse_col, T* pos_row, T* pos_col, int64_t TM, int64_t TN) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t n_row_tiles = (M + TM - 1) / TM;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), n_row_tiles)));
  // Per-thread partial column state: max, sum-exp (only when compute_col) and positive sum.
  std::vector<T> cmax(compute_col ? static_cast<size_t>(nt) * N : 0, ninf);
  std::vector<T> csum(compute_col ? static_cast<size_t>(nt) * N : 0, T(0));
  std::vector<T> cpos(static_cast<size_t>(nt) * N, T(0));

#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    std::vector<T> S(static_cast<size_t>(TM) * TN);
    std::vector<T> rmax(TM), rsum(TM), rpos(TM), scratch(TN);
    T* my_cmax = compute_col ? cmax.data() + static_cast<size_t>(tid) * N : nullptr;
    T* my_csum = compute_col ? csum.data() + static_cast<size_t>(tid) * N : nullptr;
    T* my_cpos = cpos.data() + static_cast<size_t>(tid) * N;

#pragma omp for schedule(static)
    for (int64_t rt = 0; rt < n_row_tiles; ++rt) {
      const int64_t r0 = rt * TM, mi = std::min(TM, M - r0);
      std::fill(rmax.begin(), rmax.end(), ninf);
      std::fill(rsum.begin(), rsum.end(), T(0));
      std::fill(rpos.begin(), rpos.end(), T(0));
      for (int64_t c0 = 0; c0 < N; c0 += TN) {
        const int64_t nj = std::min(TN, N - c0);
        score_tile(x + r0 * ldx, ldx, mi, y + c0 * ldy, ldy, nj, d, S.data(), TN);
        for (int64_t i = 0; i < mi; ++i) {
          T* z = S.data() + i * TN;
          const T m = scale_max(z, nj, scale, rmax[i]);
          rsum[i] = rsum[i] * std::exp(rmax[i] - m) + exp_sum(z, nj, m);  // exp(-inf) = 0 on the first tile
          rmax[i] = m;
          int64_t lo, hi;
          positive_range((r0 + i + row_off) / row_div, col_off, col_div, c0, nj, &lo, &hi);
          for (int64_t j = lo; j < hi; ++j) {
            rpos[i] += z[j];
            my_cpos[c0 + j] += z[j];
          }
        }
        if (compute_col) col_update(S.data(), TN, mi, nj, my_cmax + c0, my_csum + c0, scratch.data());
      }
      for (int64_t i = 0; i < mi; ++i) {
        lse_row[r0 + i] = rmax[i] + std::log(rsum[i]);
        pos_row[r0 + i] = rpos[i];
      }
    }
  }

  // Merge the per-thread column partials in thread order.
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t c = 0; c < N; ++c) {
    T p = 0;
    for (int t = 0; t < nt; ++t) p += cpos[static_cast<size_t>(t) * N + c];
    pos_col[c] = p;
    if (compute_col) {
      T m = ninf;
      for (int t = 0; t < nt; ++t) m = std::max(m, cmax[static_cast<size_t>(t) * N + c]);
      T s = 0;
      for (int t = 0; t < nt; ++t) {
        const T mt = cmax[static_cast<size_t>(t) * N + c];
        if (mt != ninf) s += csum[static_cast<size_t>(t) * N + c] * std::exp(mt - m);
      }
      lse_col[c] = m + std::log(s);
    } else {
      lse_col[c] = 0;
    }
  }
}

// dZ of one recomputed tile, in place: S holds raw scores on entry and dZ on exit. Returns sum dZ * raw over
// the tile (the dscale partial). Written for the row-owned orientation (S = x_tile y_tile^T, rows r0.., columns
// c0..); the column-owned pass calls it on S^T = y_tile x_tile^T with the roles of rows and columns swapped
// (the rule (r + row_off) // row_div == (c + col_off) // col_div is symmetric). use_vec = false when the
// column-side coefficients are all 0 (row-only cross-entropy: the column LSE is unspecified then).
template <typename T>
T tile_dz(T* S, int64_t lds, int64_t r0, int64_t mi, int64_t c0, int64_t nj, T scale, const T* lse_r,
          const T* lse_c, const T* coef_r, const T* coef_c, T w_pos, int64_t off_r, int64_t div_r, int64_t off_c,
          int64_t div_c, bool use_scalar, bool use_vec) {
  const int terms = use_vec ? (use_scalar ? kBoth : kVectorOnly) : kScalarOnly;
  T acc = 0;
  for (int64_t i = 0; i < mi; ++i) {
    T* s = S + i * lds;
    int64_t lo, hi;
    positive_range((r0 + i + off_r) / div_r, off_c, div_c, c0, nj, &lo, &hi);
    T pos_raw = 0;
    for (int64_t j = lo; j < hi; ++j) pos_raw += s[j];
    acc += dz_row(s, nj, scale, coef_r[r0 + i], lse_r[r0 + i], coef_c + c0, lse_c + c0, terms);
    for (int64_t j = lo; j < hi; ++j) s[j] -= w_pos;
    acc -= w_pos * pos_raw;
  }
  return acc;
}

// Budget for the fused backward's per-thread dy partials: 256 MiB, or CCR_FAST_CPU_BWD_WORKSPACE_MB (0 forces
// the two-pass backward).
double fused_workspace_bytes() {
  const char* env = std::getenv("CCR_FAST_CPU_BWD_WORKSPACE_MB");
  return (env != nullptr && env[0] != '\0') ? std::atof(env) * 1048576.0 : 256.0 * 1048576.0;
}

template <typename T>
void backward_impl(const T* x, const T* y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy, T scale,
                   const T* lse_row, const T* lse_col, const T* row_coef, const T* col_coef, T w_pos,
                   int64_t row_off, int64_t row_div, int64_t col_off, int64_t col_div, T* dx, T* dy, T* dscale,
                   int64_t TM, int64_t TN) {
  const int64_t n_row_tiles = (M + TM - 1) / TM, n_col_tiles = (N + TN - 1) / TN;
  const int nt_rows = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), n_row_tiles)));
  std::vector<double> dscale_part(nt_rows, 0.0);
  const bool use_col = std::any_of(col_coef, col_coef + N, [](T c) { return c != T(0); });
  // Fused single pass when the per-thread dy partials fit the workspace budget (thread 0 accumulates into dy).
  const size_t dy_elems = static_cast<size_t>(N) * d;
  const double budget = fused_workspace_bytes();
  const bool fused = budget > 0 && static_cast<double>(nt_rows - 1) * dy_elems * sizeof(T) <= budget;
  std::vector<T> dy_part(fused ? (nt_rows - 1) * dy_elems : 0, T(0));
  if (fused) std::fill(dy, dy + dy_elems, T(0));

  // Row-owned pass: dx, the dscale partials and, when fused, the per-thread dy partials.
#pragma omp parallel num_threads(nt_rows)
  {
    const int tid = thread_id();
    std::vector<T> S(static_cast<size_t>(TM) * TN), St(fused ? static_cast<size_t>(TN) * TM : 0);
    T* my_dy = tid == 0 ? dy : dy_part.data() + (fused ? (tid - 1) * dy_elems : 0);
    double part = 0.0;
#pragma omp for schedule(static)
    for (int64_t rt = 0; rt < n_row_tiles; ++rt) {
      const int64_t r0 = rt * TM, mi = std::min(TM, M - r0);
      T* dxt = dx + r0 * d;
      std::fill(dxt, dxt + mi * d, T(0));
      for (int64_t c0 = 0; c0 < N; c0 += TN) {
        const int64_t nj = std::min(TN, N - c0);
        score_tile(x + r0 * ldx, ldx, mi, y + c0 * ldy, ldy, nj, d, S.data(), TN);
        part += static_cast<double>(tile_dz<T>(S.data(), TN, r0, mi, c0, nj, scale, lse_row, lse_col, row_coef,
                                               col_coef, w_pos, row_off, row_div, col_off, col_div, true, use_col));
        gemm_acc(S.data(), TN, mi, nj, y + c0 * ldy, ldy, d, dxt, d);  // dx_tile += dZ_tile y_tile
        if (fused) {  // my_dy_tile += dZ_tile^T x_tile
          for (int64_t i = 0; i < mi; ++i)
            for (int64_t j = 0; j < nj; ++j) St[j * TM + i] = S[i * TN + j];
          gemm_acc(St.data(), TM, nj, mi, x + r0 * ldx, ldx, d, my_dy + c0 * d, d);
        }
      }
      for (int64_t k = 0; k < mi * d; ++k) dxt[k] *= scale;
    }
    dscale_part[tid] = part;
  }
  if (fused) {  // dy = scale * (thread 0's + thread 1's + ...), in thread order
#pragma omp parallel for schedule(static) num_threads(nt_rows)
    for (int64_t c = 0; c < N; ++c) {
      T* dyc = dy + c * d;
      for (int t = 0; t + 1 < nt_rows; ++t) {
        const T* pc = dy_part.data() + t * dy_elems + c * d;
        for (int64_t k = 0; k < d; ++k) dyc[k] += pc[k];
      }
      for (int64_t k = 0; k < d; ++k) dyc[k] *= scale;
    }
  }
  double ds = 0.0;
  for (double p : dscale_part) ds += p;
  *dscale = static_cast<T>(ds);

  if (fused) return;
  // Column-owned pass: dy, from the transposed tiles dZ^T (nj x mi, row stride TM).
  const int nt_cols = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), n_col_tiles)));
#pragma omp parallel num_threads(nt_cols)
  {
    std::vector<T> S(static_cast<size_t>(TM) * TN);
#pragma omp for schedule(static)
    for (int64_t ct = 0; ct < n_col_tiles; ++ct) {
      const int64_t c0 = ct * TN, nj = std::min(TN, N - c0);
      T* dyt = dy + c0 * d;
      std::fill(dyt, dyt + nj * d, T(0));
      for (int64_t r0 = 0; r0 < M; r0 += TM) {
        const int64_t mi = std::min(TM, M - r0);
        score_tile(y + c0 * ldy, ldy, nj, x + r0 * ldx, ldx, mi, d, S.data(), TM);
        tile_dz<T>(S.data(), TM, c0, nj, r0, mi, scale, lse_col, lse_row, col_coef, row_coef, w_pos, col_off,
                   col_div, row_off, row_div, use_col, true);
        gemm_acc(S.data(), TM, nj, mi, x + r0 * ldx, ldx, d, dyt, d);  // dy_tile += dZ^T_tile x_tile
      }
      for (int64_t k = 0; k < nj * d; ++k) dyt[k] *= scale;
    }
  }
}

void contrastive_forward_cpu(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx,
                             int64_t ldy, int dtype, double scale, int64_t row_off, int64_t row_div, int64_t col_off,
                             int64_t col_div, bool compute_col, std::uintptr_t lse_row, std::uintptr_t lse_col,
                             std::uintptr_t pos_row, std::uintptr_t pos_col, int64_t tile_m, int64_t tile_n) {
  check_common(M, N, d, ldx, ldy, dtype, row_off, row_div, col_off, col_div);
  CCR_CHECK_ARG(x && y && lse_row && lse_col && pos_row && pos_col, "contrastive_forward_cpu: null pointer");
  CCR_CHECK_ARG(tile_m >= 0 && tile_n >= 0, "contrastive_forward_cpu: tile sizes must be >= 0 (0 = default)");
  const int64_t TM = tile_m ? tile_m : kTileM, TN = tile_n ? tile_n : kTileN;
  if (dtype == kFloat32) {
    forward_impl<float>(as_ptr<const float>(x), as_ptr<const float>(y), M, N, d, ldx, ldy, static_cast<float>(scale),
                        row_off, row_div, col_off, col_div, compute_col, as_ptr<float>(lse_row),
                        as_ptr<float>(lse_col), as_ptr<float>(pos_row), as_ptr<float>(pos_col), TM, TN);
  } else {
    forward_impl<double>(as_ptr<const double>(x), as_ptr<const double>(y), M, N, d, ldx, ldy, scale, row_off,
                         row_div, col_off, col_div, compute_col, as_ptr<double>(lse_row), as_ptr<double>(lse_col),
                         as_ptr<double>(pos_row), as_ptr<double>(pos_col), TM, TN);
  }
}

void contrastive_backward_cpu(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx,
                              int64_t ldy, int dtype, double scale, std::uintptr_t lse_row, std::uintptr_t lse_col,
                              std::uintptr_t row_coef, std::uintptr_t col_coef, double w_pos, int64_t row_off,
                              int64_t row_div, int64_t col_off, int64_t col_div, std::uintptr_t dx, std::uintptr_t dy,
                              std::uintptr_t dscale, int64_t tile_m, int64_t tile_n) {
  check_common(M, N, d, ldx, ldy, dtype, row_off, row_div, col_off, col_div);
  CCR_CHECK_ARG(x && y && lse_row && lse_col && row_coef && col_coef && dx && dy && dscale,
                "contrastive_backward_cpu: null pointer");
  CCR_CHECK_ARG(tile_m >= 0 && tile_n >= 0, "contrastive_backward_cpu: tile sizes must be >= 0 (0 = default)");
  const int64_t TM = tile_m ? tile_m : kTileM, TN = tile_n ? tile_n : kTileN;
  if (dtype == kFloat32) {
    backward_impl<float>(as_ptr<const float>(x), as_ptr<const float>(y), M, N, d, ldx, ldy, static_cast<float>(scale),
                         as_ptr<const float>(lse_row), as_ptr<const float>(lse_col), as_ptr<const float>(row_coef),
                         as_ptr<const float>(col_coef), static_cast<float>(w_pos), row_off, row_div, col_off, col_div,
                         as_ptr<float>(dx), as_ptr<float>(dy), as_ptr<float>(dscale), TM, TN);
  } else {
    backward_impl<double>(as_ptr<const double>(x), as_ptr<const double>(y), M, N, d, ldx, ldy, scale,
                          as_ptr<const double>(lse_row), as_ptr<const double>(lse_col),
                          as_ptr<const double>(row_coef), as_ptr<const double>(col_coef), w_pos, row_off, row_div,
                          col_off, col_div, as_ptr<double>(dx), as_ptr<double>(dy), as_ptr<double>(dscale), TM, TN);
  }
}

}  // namespace
}  // namespace ccr

void register_cpu_contrastive(py::module_& m) {
  using namespace pybind11::literals;
  m.def("contrastive_forward_cpu", &ccr::contrastive_forward_cpu, py::call_guard<py::gil_scoped_release>(),
        "Row/column LSE and positive sums of Z = scale * x y^T (docs/interop.md). Outputs: lse_row[M], lse_col[N], "
        "pos_row[M], pos_col[N] in the input dtype (float32/float64). tile_m/tile_n = 0 use the defaults.",
        "x"_a, "y"_a, "M"_a, "N"_a, "d"_a, "ldx"_a, "ldy"_a, "dtype"_a, "scale"_a, "row_off"_a, "row_div"_a,
        "col_off"_a, "col_div"_a, "compute_col"_a, "lse_row"_a, "lse_col"_a, "pos_row"_a, "pos_col"_a,
        "tile_m"_a = 0, "tile_n"_a = 0);
  m.def("contrastive_backward_cpu", &ccr::contrastive_backward_cpu, py::call_guard<py::gil_scoped_release>(),
        "dx[M,d], dy[N,d] (contiguous) and dscale (0-dim) of the contrastive loss (docs/interop.md).",
        "x"_a, "y"_a, "M"_a, "N"_a, "d"_a, "ldx"_a, "ldy"_a, "dtype"_a, "scale"_a, "lse_row"_a, "lse_col"_a,
        "row_coef"_a, "col_coef"_a, "w_pos"_a, "row_off"_a, "row_div"_a, "col_off"_a, "col_div"_a, "dx"_a, "dy"_a,
        "dscale"_a, "tile_m"_a = 0, "tile_n"_a = 0);
}

// CPU kernels of the "blas" backend: a vendor GEMM (a cblas_?gemm function pointer registered once from Python,
// e.g. OpenBLAS of the scipy-openblas32 wheel; see ccr_fast/backends/blas/_gemm.py) over tiles of the score matrix,
// each tile followed at once by a fused C++/OpenMP epilogue while it is hot in cache. Contract: docs/interop.md.
//
// Threading: one level only. OpenMP threads own row blocks (or tiles); each calls the GEMM single-threaded (Python
// sets the registered library to 1 thread; it is a private copy, so numpy/torch are not affected), so BLAS, OpenMP
// and torch threads never compete.
//
// Tiles: R rows (tile_m) x W columns (tile_n) of raw scores S = x yᵀ (the logit scale is applied in the epilogue).
//   contrastive forward   row LSE finished per row block (online over the column tiles), column LSE as per-thread
//                         online partials merged at the end; with `keep`, S is written to an [M, N] buffer.
//   contrastive backward  one pass over row blocks: per tile S (recomputed, or read from the scores the forward
//                         kept), dZ (one fused pass), dx[rows] += scale·dZ·y and dy[cols] += scale·dZᵀ·x into
//                         per-thread [N, d] partials summed at the end (2 GEMMs per tile, 3 with the recompute).
//                         Without the partials workspace: a row-owned pass (dx) and a column-owned pass (dy).
//   triplet forward       hardest negative per row (online) and per column (per-thread partials merged), ties to
//                         the lower index; sum mode: hinge sums.
//   topk                  per-row bounded heaps; a vector threshold filter drops almost every score at one compare.
//   target_ranks          counts against an error-bounded estimate of each target score; the few scores within the
//                         bound of it are kept and compared exactly with the target's GEMM score at the end, so the
//                         result is exact for the scores the GEMM produced, whatever its summation order.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common.h"
#include "cpu_util.h"
#include "blas_gemm.h"
#include "lowp_gemm.h"

namespace py = pybind11;

namespace {

using std::int64_t;
using namespace ccr::blas;

// ------------------------------------------------------------------------------------------------ exp
// exp on 16 float lanes (GCC vector extensions: AVX-512, AVX2 or SSE in the clones below), |rel err| ~ 2e-7.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v16f __attribute__((vector_size(64)));
typedef std::int32_t v16i __attribute__((vector_size(64)));
inline __attribute__((always_inline)) v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) void store16(float* p, v16f v) { std::memcpy(p, &v, sizeof v); }
inline __attribute__((always_inline)) v16f bc16(float a) { return v16f{} + a; }
inline __attribute__((always_inline)) v16f vexp(v16f x) {
  const v16f lo = bc16(-87.0f), hi = bc16(88.0f), shifter = bc16(12582912.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v16f t = x * 1.44269504088896341f + shifter;
  const v16f n = t - shifter;
  const v16f r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  v16f p = bc16(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v16i bits = ((v16i)t - (v16i)shifter + 127) << 23;
  return p * (v16f)bits;
}
inline float sexp(float x) {
  v16f v = bc16(x);
  return vexp(v)[0];
}
inline double sexp(double x) { return std::exp(std::min(std::max(x, -708.0), 709.0)); }

#define CCR_BLAS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))

// ------------------------------------------------------------------------------------------------ row / column stats
// One row of a tile: z = scale*s; returns the row max; sum of exp(z - m) into *sum.
template <typename T>
inline T row_max(const T* s, int64_t n, T scale) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const T z = scale * s[j];
    m = (z > m || z != z) ? z : m;
  }
  return m;
}

CCR_BLAS_CLONES float row_stats(const float* s, int64_t n, float scale, float* out_sum) {
  float m = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  v16f vm = bc16(m);
  for (; j + 16 <= n; j += 16) {
    const v16f z = load16(s + j) * scale;
    vm = z > vm ? z : vm;
  }
  for (int l = 0; l < 16; ++l) m = vm[l] > m ? vm[l] : m;
  for (; j < n; ++j) m = std::max(m, scale * s[j]);
  if (!(m > -std::numeric_limits<float>::infinity())) {  // all -inf or NaN: let the NaN through
    float acc = 0.f;
    for (j = 0; j < n; ++j) acc += std::exp(scale * s[j] - m);
    *out_sum = acc;
    return m;
  }
  v16f acc = bc16(0.f);
  const v16f vmm = bc16(m);
  for (j = 0; j + 16 <= n; j += 16) acc += vexp(load16(s + j) * scale - vmm);
  float a = 0.f;
  for (int l = 0; l < 16; ++l) a += acc[l];
  for (; j < n; ++j) a += sexp(scale * s[j] - m);
  *out_sum = a;
  return m;
}
double row_stats(const double* s, int64_t n, double scale, double* out_sum) {
  const double m = row_max(s, n, scale);
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) acc += std::exp(scale * s[j] - m);
  *out_sum = acc;
  return m;
}

// Online column (max, sum-exp) update with a tile S[R, W] (ld lds): cmax/csum of the W columns.
CCR_BLAS_CLONES void col_stats(const float* S, int64_t lds, int64_t R, int64_t W, float scale, float* cmax,
                               float* csum, float* tmp) {
  // tmp[W]: the tile's column max
  for (int64_t c = 0; c < W; ++c) tmp[c] = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < R; ++r) {
    const float* s = S + r * lds;
    int64_t c = 0;
    for (; c + 16 <= W; c += 16) {
      const v16f z = load16(s + c) * scale, t = load16(tmp + c);
      store16(tmp + c, z > t ? z : t);
    }
    for (; c < W; ++c) tmp[c] = std::max(tmp[c], scale * s[c]);
  }
  for (int64_t c = 0; c < W; ++c) {  // rescale the running sums to the new max
    const float mn = std::max(cmax[c], tmp[c]);
    csum[c] = (csum[c] == 0.f) ? 0.f : csum[c] * sexp(cmax[c] - mn);
    cmax[c] = mn;
  }
  for (int64_t r = 0; r < R; ++r) {
    const float* s = S + r * lds;
    int64_t c = 0;
    for (; c + 16 <= W; c += 16) store16(csum + c, load16(csum + c) + vexp(load16(s + c) * scale - load16(cmax + c)));
    for (; c < W; ++c) csum[c] += sexp(scale * s[c] - cmax[c]);
  }
}
void col_stats(const double* S, int64_t lds, int64_t R, int64_t W, double scale, double* cmax, double* csum,
               double*) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < W; ++c) {
      const double z = scale * S[r * lds + c];
      if (z > cmax[c]) {
        csum[c] = (csum[c] == 0.0 ? 0.0 : csum[c] * std::exp(cmax[c] - z)) + 1.0;
        cmax[c] = z;
      } else {
        csum[c] += std::exp(z - cmax[c]);
      }
    }
}

inline void merge_lse(double& m, double& s, double m2, double s2) {
  if (s2 == 0.0 && !(m2 != m2)) return;
  if (s == 0.0 && !(m != m)) {
    m = m2;
    s = s2;
    return;
  }
  const double mn = std::max(m, m2);
  s = s * std::exp(m - mn) + s2 * std::exp(m2 - mn);
  m = mn;
}

// Positive columns of a row with key g within [c0, c0 + W): local [lo, hi).
inline void positive_range(int64_t g, int64_t col_off, int64_t col_div, int64_t c0, int64_t W, int64_t* lo,
                           int64_t* hi) {
  const int64_t first = g * col_div - col_off;
  *lo = std::max<int64_t>(first - c0, 0);
  *hi = std::min<int64_t>(first + col_div - c0, W);
  if (*hi < *lo) *hi = *lo;
}

struct Tiles {
  int64_t R, W;
};
inline Tiles tiles(int64_t tile_m, int64_t tile_n, int64_t M, int64_t N) {
  Tiles t{tile_m > 0 ? tile_m : 128, tile_n > 0 ? tile_n : 512};
  t.R = std::min(t.R, M);
  t.W = std::min(t.W, N);
  return t;
}

// ------------------------------------------------------------------------------------------------ contrastive fwd
template <typename T>
void contrastive_fwd(const T* x, const T* y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy, T scale,
                     int64_t ro, int64_t rd, int64_t co, int64_t cd, bool compute_col, T* lse_row, T* lse_col,
                     T* pos_row, T* pos_col, T* keep, Tiles tl) {
  const int nt = ccr::omp_threads();
  const int64_t nrb = (M + tl.R - 1) / tl.R;
  const int64_t ncol = compute_col ? N : 0;
  std::vector<T> cmax((size_t)nt * ncol, -std::numeric_limits<T>::infinity()), csum((size_t)nt * ncol, T(0));
  std::vector<T> cpos((size_t)nt * N, T(0));
#pragma omp parallel num_threads(nt)
  {
    const int tid = ccr::omp_thread_id();
    std::vector<T> buf(keep ? 0 : (size_t)tl.R * tl.W), tmp(tl.W);
    std::vector<double> rm(tl.R), rs(tl.R);
    T* my_cmax = compute_col ? cmax.data() + (size_t)tid * N : nullptr;
    T* my_csum = compute_col ? csum.data() + (size_t)tid * N : nullptr;
    T* my_cpos = cpos.data() + (size_t)tid * N;
#pragma omp for schedule(dynamic, 1)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * tl.R, R = std::min(tl.R, M - r0);
      for (int64_t r = 0; r < R; ++r) {
        rm[r] = -std::numeric_limits<double>::infinity();
        rs[r] = 0.0;
        pos_row[r0 + r] = T(0);
      }
      for (int64_t c0 = 0; c0 < N; c0 += tl.W) {
        const int64_t W = std::min(tl.W, N - c0);
        T* S = keep ? keep + r0 * N + c0 : buf.data();
        const int64_t lds = keep ? N : W;
        score_tile(x + r0 * ldx, ldx, y + c0 * ldy, ldy, d, R, W, S, lds);
        for (int64_t r = 0; r < R; ++r) {
          const T* s = S + r * lds;
          T sum;
          const T m = row_stats(s, W, scale, &sum);
          merge_lse(rm[r], rs[r], (double)m, (double)sum);
          int64_t lo, hi;
          positive_range((r0 + r + ro) / rd, co, cd, c0, W, &lo, &hi);
          for (int64_t j = lo; j < hi; ++j) {
            const T z = scale * s[j];
            pos_row[r0 + r] += z;
            my_cpos[c0 + j] += z;
          }
        }
        if (compute_col) col_stats(S, lds, R, W, scale, my_cmax + c0, my_csum + c0, tmp.data());
      }
      for (int64_t r = 0; r < R; ++r) lse_row[r0 + r] = (T)(rm[r] + std::log(rs[r]));
    }
  }
  for (int64_t c = 0; c < N; ++c) {
    double p = 0.0;
    for (int t = 0; t < nt; ++t) p += (double)cpos[(size_t)t * N + c];
    pos_col[c] = (T)p;
    if (compute_col) {
      double m = -std::numeric_limits<double>::infinity(), s = 0.0;
      for (int t = 0; t < nt; ++t) merge_lse(m, s, (double)cmax[(size_t)t * N + c], (double)csum[(size_t)t * N + c]);
      lse_col[c] = (T)(m + std::log(s));
    } else {
      lse_col[c] = T(0);
    }
  }
}

// ------------------------------------------------------------------------------------------------ contrastive bwd
// dZ of one tile: D[r, c] = rc[r] e^{z - lr[r]} + cc[c] e^{z - lc[c]} with z = scale*S[r, c] (zero coefficients
// skip their term; D may alias S); returns Σ dZ·S (the dscale partial, before the positive correction).
CCR_BLAS_CLONES double dz_tile(const float* S, int64_t lds, float* D, int64_t ldd, int64_t R, int64_t W, float scale,
                               const float* rc, const float* lr, const float* cc, const float* lc, bool any_col) {
  double total = 0.0;
  for (int64_t r = 0; r < R; ++r) {
    const float* s = S + r * lds;
    float* o = D + r * ldd;
    const float a = rc[r], l = lr[r];
    v16f acc = bc16(0.f);
    int64_t c = 0;
    if (any_col && a != 0.f) {
      for (; c + 16 <= W; c += 16) {
        const v16f raw = load16(s + c), z = raw * scale;
        const v16f g = vexp(z - l) * a + load16(cc + c) * vexp(z - load16(lc + c));
        acc += g * raw;
        store16(o + c, g);
      }
    } else if (any_col) {
      for (; c + 16 <= W; c += 16) {
        const v16f raw = load16(s + c), z = raw * scale;
        const v16f g = load16(cc + c) * vexp(z - load16(lc + c));
        acc += g * raw;
        store16(o + c, g);
      }
    } else if (a != 0.f) {
      for (; c + 16 <= W; c += 16) {
        const v16f raw = load16(s + c), z = raw * scale;
        const v16f g = vexp(z - l) * a;
        acc += g * raw;
        store16(o + c, g);
      }
    } else {
      for (; c + 16 <= W; c += 16) store16(o + c, bc16(0.f));
    }
    float t = 0.f;
    for (int ll = 0; ll < 16; ++ll) t += acc[ll];
    for (; c < W; ++c) {
      const float raw = s[c], z = raw * scale;
      float g = a != 0.f ? a * sexp(z - l) : 0.f;
      if (cc[c] != 0.f) g += cc[c] * sexp(z - lc[c]);
      t += g * raw;
      o[c] = g;
    }
    total += t;
  }
  return total;
}
double dz_tile(const double* S, int64_t lds, double* D, int64_t ldd, int64_t R, int64_t W, double scale,
               const double* rc, const double* lr, const double* cc, const double* lc, bool) {
  double total = 0.0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < W; ++c) {
      const double raw = S[r * lds + c], z = raw * scale;
      double g = rc[r] != 0.0 ? rc[r] * std::exp(z - lr[r]) : 0.0;
      if (cc[c] != 0.0) g += cc[c] * std::exp(z - lc[c]);
      total += g * raw;
      D[r * ldd + c] = g;
    }
  return total;
}

// One tile's dZ including the positive term (D may alias S); returns the dscale partial Σ dZ ⊙ S.
template <typename T>
double dz_full(const T* S, int64_t lds, T* D, int64_t ldd, int64_t r0, int64_t R, int64_t c0, int64_t W, T scale,
               const T* rc, const T* lr, const T* cc, const T* lc, bool any_col, T w_pos, int64_t ro, int64_t rd,
               int64_t co, int64_t cd) {
  double pos = 0.0;  // the positives' raw scores, read before D overwrites them
  for (int64_t r = 0; r < R; ++r) {
    int64_t lo, hi;
    positive_range((r0 + r + ro) / rd, co, cd, c0, W, &lo, &hi);
    for (int64_t j = lo; j < hi; ++j) pos += (double)S[r * lds + j];
  }
  const double tot = dz_tile(S, lds, D, ldd, R, W, scale, rc + r0, lr + r0, cc + c0, lc + c0, any_col);
  for (int64_t r = 0; r < R; ++r) {
    int64_t lo, hi;
    positive_range((r0 + r + ro) / rd, co, cd, c0, W, &lo, &hi);
    for (int64_t j = lo; j < hi; ++j) D[r * ldd + j] -= w_pos;
  }
  return tot - (double)w_pos * pos;
}

// One pass over row blocks: per tile, S (GEMM, or read from the kept scores), dZ, dx[rows] += scale dZ y[cols] and,
// with `dy_parts` (per-thread [N, d] partials), dy[cols] += scale dZᵀ x[rows]. Returns Σ dZ ⊙ S.
template <typename T>
double row_pass(const T* A, int64_t lda, int64_t nA, const T* B, int64_t ldb, int64_t nB, int64_t d, T scale,
                const T* ra, const T* la, const T* cb, const T* lb, bool any_b, T w_pos, int64_t pro, int64_t prd,
                int64_t pco, int64_t pcd, T* out, T* dy_parts, const T* saved, Tiles tl, int nt) {
  const int64_t nrb = (nA + tl.R - 1) / tl.R;
  double acc = 0.0;
#pragma omp parallel reduction(+ : acc) num_threads(nt)
  {
    std::vector<T> buf((size_t)tl.R * tl.W);
    T* dyp = dy_parts ? dy_parts + (size_t)ccr::omp_thread_id() * nB * d : nullptr;
#pragma omp for schedule(dynamic, 1)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * tl.R, R = std::min(tl.R, nA - r0);
      for (int64_t c0 = 0; c0 < nB; c0 += tl.W) {
        const int64_t W = std::min(tl.W, nB - c0);
        const T* S = buf.data();
        int64_t lds = W;
        if (saved) {
          S = saved + r0 * nB + c0;
          lds = nB;
        } else {
          score_tile(A + r0 * lda, lda, B + c0 * ldb, ldb, d, R, W, buf.data(), W);
        }
        acc += dz_full(S, lds, buf.data(), W, r0, R, c0, W, scale, ra, la, cb, lb, any_b, w_pos, pro, prd, pco, pcd);
        gemm(false, false, R, d, W, scale, buf.data(), W, B + c0 * ldb, ldb, c0 == 0 ? T(0) : T(1), out + r0 * d, d);
        if (dyp) gemm(true, false, W, d, R, scale, buf.data(), W, A + r0 * lda, lda, T(1), dyp + c0 * d, d);
      }
    }
  }
  return acc;
}

template <typename T>
void contrastive_bwd(const T* x, const T* y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy, T scale,
                     const T* lse_row, const T* lse_col, const T* row_coef, const T* col_coef, T w_pos, int64_t ro,
                     int64_t rd, int64_t co, int64_t cd, T* dx, T* dy, T* dscale, const T* saved, T* dy_parts,
                     Tiles tl) {
  const int nt = ccr::omp_threads();
  bool any_col = false, any_row = false;
  for (int64_t c = 0; c < N && !any_col; ++c) any_col = col_coef[c] != T(0);
  for (int64_t r = 0; r < M && !any_row; ++r) any_row = row_coef[r] != T(0);
  if (dy_parts) {  // one pass: dx by rows, dy as per-thread partials, summed at the end
    std::fill(dy_parts, dy_parts + (size_t)nt * N * d, T(0));
    *dscale = (T)row_pass(x, ldx, M, y, ldy, N, d, scale, row_coef, lse_row, col_coef, lse_col, any_col, w_pos, ro,
                          rd, co, cd, dx, dy_parts, saved, tl, nt);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t n = 0; n < N * d; ++n) {
      T v = T(0);
      for (int t = 0; t < nt; ++t) v += dy_parts[(size_t)t * N * d + n];
      dy[n] = v;
    }
    return;
  }
  // Without partials: a row-owned pass (dx, dscale) and a column-owned pass on Sᵀ tiles (dy); the coefficients
  // swap roles in the second.
  *dscale = (T)row_pass(x, ldx, M, y, ldy, N, d, scale, row_coef, lse_row, col_coef, lse_col, any_col, w_pos, ro, rd,
                        co, cd, dx, (T*)nullptr, saved, tl, nt);
  row_pass(y, ldy, N, x, ldx, M, d, scale, col_coef, lse_col, row_coef, lse_row, any_row, w_pos, co, cd, ro, rd, dy,
           (T*)nullptr, (const T*)nullptr, tl, nt);
}

// ------------------------------------------------------------------------------------------------ bf16 inputs
// The same epilogues over fp32 tiles that the bf16 GEMM (lowp_gemm.h: bf16 products, fp32 accumulation) writes.
// Operands arrive padded: x [Mp, dp], y [Np, dp] (Mp, Np, dp multiples of 64, zero rows/columns), so every GEMM
// call has N = 64; padded scores are exactly 0 and the epilogues only read the valid M x N region.
// Backward per tile: S (recomputed), dZ in fp32 (dz_full), rounded once to bf16 as the two GEMM operands:
// row-major for dx[rows] += dZ·y[cols], VNNI-packed for dyᵀ[:, cols] += x[rows]ᵀ·dZ (per-thread fp32 partials).
using ccr::lowp::bf16;
typedef std::uint16_t v16us __attribute__((vector_size(32)));
typedef std::uint32_t v16u __attribute__((vector_size(64)));

inline Tiles lowp_tiles(int64_t tile_m, int64_t tile_n) {
  auto up = [](int64_t v, int64_t def) { return v > 0 ? (v + 63) / 64 * 64 : def; };
  return Tiles{up(tile_m, 256), up(tile_n, 512)};
}

CCR_BLAS_CLONES void to_bf16_row(const float* s, int64_t n, bf16* o) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    v16u u;
    std::memcpy(&u, s + j, 64);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const v16us h = __builtin_convertvector(u, v16us);
    std::memcpy(o + j, &h, 32);
  }
  for (; j < n; ++j) o[j] = ccr::lowp::to_bf16(s[j]);
}

// V (VNNI, per 64-column block jb: [Rg/2][64][2] at V + jb*Rg*64) of the fp32 tile S [Rg, Wg] (ld Wg): each
// 32-bit word holds bf16(S[2k, n]) in its low half and bf16(S[2k+1, n]) in its high half.
CCR_BLAS_CLONES void to_bf16_vnni(const float* S, int64_t Rg, int64_t Wg, bf16* V) {
  for (int64_t jb = 0; jb < Wg / 64; ++jb) {
    std::uint32_t* out = reinterpret_cast<std::uint32_t*>(V + jb * Rg * 64);
    for (int64_t k2 = 0; k2 < Rg / 2; ++k2) {
      const float* a = S + (2 * k2) * Wg + jb * 64;
      const float* b = a + Wg;
      std::uint32_t* o = out + k2 * 64;
      for (int n = 0; n < 64; n += 16) {
        v16u ua, ub;
        std::memcpy(&ua, a + n, 64);
        std::memcpy(&ub, b + n, 64);
        ua = (ua + 0x7fffu + ((ua >> 16) & 1u)) >> 16;
        ub = (ub + 0x7fffu + ((ub >> 16) & 1u)) & 0xffff0000u;
        const v16u w = ua | ub;
        std::memcpy(o + n, &w, 64);
      }
    }
  }
}

// Sum of exp(scale*s - ref) over one row, against a reference `ref` (the running max of the earlier tiles) instead
// of the tile's own max: one pass instead of two. Returns false (sum unusable) when some z > ref + 30, where the
// caller takes the exact two-pass row_stats; below that the fp32 sum cannot overflow.
CCR_BLAS_CLONES bool row_sum_ref(const float* s, int64_t n, float scale, float ref, float* out_sum) {
  const v16f vref = bc16(ref), big = bc16(ref + 30.f);
  v16f acc = bc16(0.f);
  v16i bad = v16i{} + 0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const v16f z = load16(s + j) * scale;
    bad |= (z > big);
    acc += vexp(z - vref);
  }
  float a = 0.f;
  bool ok = true;
  for (int l = 0; l < 16; ++l) {
    a += acc[l];
    ok = ok && bad[l] == 0;
  }
  for (; j < n; ++j) {
    const float z = scale * s[j];
    ok = ok && !(z > ref + 30.f);
    a += sexp(z - ref);
  }
  *out_sum = a;
  return ok;
}

// Column sums of exp(scale*S - cref[c]) over a tile S[R, W] (ld lds) into tsum[W] (overwritten), against the
// running column maxima cref; false when some z > cref + 30 (then the caller takes the exact col_stats).
CCR_BLAS_CLONES bool col_sum_ref(const float* S, int64_t lds, int64_t R, int64_t W, float scale, const float* cref,
                                 float* tsum) {
  for (int64_t c = 0; c < W; ++c) tsum[c] = 0.f;
  v16i bad = v16i{} + 0;
  bool ok = true;
  for (int64_t r = 0; r < R; ++r) {
    const float* s = S + r * lds;
    int64_t c = 0;
    for (; c + 16 <= W; c += 16) {
      const v16f z = load16(s + c) * scale, ref = load16(cref + c);
      bad |= (z > ref + 30.f);
      store16(tsum + c, load16(tsum + c) + vexp(z - ref));
    }
    for (; c < W; ++c) {
      const float z = scale * s[c];
      ok = ok && !(z > cref[c] + 30.f);
      tsum[c] += sexp(z - cref[c]);
    }
  }
  for (int l = 0; l < 16; ++l) ok = ok && bad[l] == 0;
  return ok;
}

// S[Rg, Wg] (ld Wg) = x[r0:r0+Rg] · y[c0:c0+Wg]ᵀ from the packed y (ynt: 64-row blocks of [dp/2][64][2]).
inline void lowp_scores(const bf16* x, const bf16* ynt, int64_t dp, int64_t r0, int64_t Rg, int64_t c0, int64_t Wg,
                        float* S) {
  for (int64_t jb = 0; jb < Wg / 64; ++jb)
    ccr::lowp::brgemm(Rg, 64, dp, dp, 64, Wg, false, x + r0 * dp, ynt + (c0 + jb * 64) * dp, S + jb * 64);
}

std::vector<bf16> lowp_pack_nt(const bf16* y, int64_t Np, int64_t dp, int nt) {
  std::vector<bf16> out((size_t)Np * dp);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t b = 0; b < Np / 64; ++b) ccr::lowp::pack_nt(y, dp, b * 64, dp, out.data() + (size_t)b * 64 * dp);
  return out;
}

// Runs body(tid) in an OpenMP region; an exception in any thread is rethrown after the region.
template <typename F>
void lowp_parallel(int nt, F body) {
  std::string err;
  bool failed = false;
#pragma omp parallel num_threads(nt)
  {
    try {
      body(ccr::omp_thread_id());
    } catch (const std::exception& e) {
#pragma omp critical(ccr_lowp_err)
      {
        failed = true;
        err = e.what();
      }
    } catch (...) {
#pragma omp critical(ccr_lowp_err)
      {
        failed = true;
        err = "unknown error in the bf16 GEMM";
      }
    }
    ccr::lowp::release();
  }
  if (failed) throw std::runtime_error("blas bf16 kernel: " + err);
}

void lowp_contrastive_fwd(const bf16* x, const bf16* y, int64_t M, int64_t N, int64_t Mp, int64_t Np, int64_t dp,
                          float scale, int64_t ro, int64_t rd, int64_t co, int64_t cd, bool compute_col,
                          float* lse_row, float* lse_col, float* pos_row, float* pos_col, Tiles tl) {
  const int nt = ccr::omp_threads();
  const std::vector<bf16> ynt = lowp_pack_nt(y, Np, dp, nt);
  const int64_t nrb = (M + tl.R - 1) / tl.R;
  const int64_t ncol = compute_col ? N : 0;
  std::vector<float> cmax((size_t)nt * ncol, -std::numeric_limits<float>::infinity()), csum((size_t)nt * ncol, 0.f);
  std::vector<float> cpos((size_t)nt * N, 0.f);
  std::vector<int64_t> next(1, 0);
  lowp_parallel(nt, [&](int tid) {
    std::vector<float> buf((size_t)tl.R * tl.W), tmp(tl.W), tsum(tl.W);
    std::vector<double> rm(tl.R), rs(tl.R);
    float* my_cmax = compute_col ? cmax.data() + (size_t)tid * N : nullptr;
    float* my_csum = compute_col ? csum.data() + (size_t)tid * N : nullptr;
    float* my_cpos = cpos.data() + (size_t)tid * N;
    bool col_ref = false;  // this thread's running column maxima are set (after its first row block)
    for (;;) {
      int64_t rb;
#pragma omp atomic capture
      rb = next[0]++;
      if (rb >= nrb) break;
      const int64_t r0 = rb * tl.R, R = std::min(tl.R, M - r0), Rg = std::min(tl.R, Mp - r0);
      for (int64_t r = 0; r < R; ++r) {
        rm[r] = -std::numeric_limits<double>::infinity();
        rs[r] = 0.0;
        pos_row[r0 + r] = 0.f;
      }
      for (int64_t c0 = 0; c0 < N; c0 += tl.W) {
        const int64_t W = std::min(tl.W, N - c0), Wg = std::min(tl.W, Np - c0);
        float* S = buf.data();
        lowp_scores(x, ynt.data(), dp, r0, Rg, c0, Wg, S);
        for (int64_t r = 0; r < R; ++r) {
          const float* s = S + r * Wg;
          float sum;
          if (c0 > 0 && std::isfinite(rm[r]) && row_sum_ref(s, W, scale, (float)rm[r], &sum)) {
            rs[r] += (double)sum;  // the state stays (reference, sum against it)
          } else {
            const float m = row_stats(s, W, scale, &sum);
            merge_lse(rm[r], rs[r], (double)m, (double)sum);
          }
          int64_t lo, hi;
          positive_range((r0 + r + ro) / rd, co, cd, c0, W, &lo, &hi);
          for (int64_t j = lo; j < hi; ++j) {
            const float z = scale * s[j];
            pos_row[r0 + r] += z;
            my_cpos[c0 + j] += z;
          }
        }
        if (compute_col) {
          if (col_ref && col_sum_ref(S, Wg, R, W, scale, my_cmax + c0, tsum.data())) {
            for (int64_t c = 0; c < W; ++c) my_csum[c0 + c] += tsum[c];
          } else {
            col_stats(S, Wg, R, W, scale, my_cmax + c0, my_csum + c0, tmp.data());
          }
        }
      }
      col_ref = compute_col;
      for (int64_t r = 0; r < R; ++r) lse_row[r0 + r] = (float)(rm[r] + std::log(rs[r]));
    }
  });
  for (int64_t c = 0; c < N; ++c) {
    double p = 0.0;
    for (int t = 0; t < nt; ++t) p += (double)cpos[(size_t)t * N + c];
    pos_col[c] = (float)p;
    if (compute_col) {
      double m = -std::numeric_limits<double>::infinity(), s = 0.0;
      for (int t = 0; t < nt; ++t) merge_lse(m, s, (double)cmax[(size_t)t * N + c], (double)csum[(size_t)t * N + c]);
      lse_col[c] = (float)(m + std::log(s));
    } else {
      lse_col[c] = 0.f;
    }
  }
}

// dx [Mp, dp] and dy [Np, dp] (fp32, padded rows zero); dyT_parts: a [threads, dp, Np] fp32 workspace.
void lowp_contrastive_bwd(const bf16* x, const bf16* y, int64_t M, int64_t N, int64_t Mp, int64_t Np, int64_t dp,
                          float scale, const float* lse_row, const float* lse_col, const float* row_coef,
                          const float* col_coef, float w_pos, int64_t ro, int64_t rd, int64_t co, int64_t cd, float* dx,
                          float* dy, float* dscale, float* dyT_parts, Tiles tl) {
  const int nt = ccr::omp_threads();
  const std::vector<bf16> ynt = lowp_pack_nt(y, Np, dp, nt);
  std::vector<bf16> ynn((size_t)Np * dp), xT((size_t)dp * Mp);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t db = 0; db < dp / 64; ++db) ccr::lowp::pack_nn(y, dp, Np, db * 64, ynn.data() + (size_t)db * Np * 64);
#pragma omp for schedule(static)
    for (int64_t r0 = 0; r0 < Mp; r0 += 64)  // xT [dp, Mp] = xᵀ, in 64 x 64 blocks
      for (int64_t k0 = 0; k0 < dp; k0 += 64)
        for (int64_t k = k0; k < k0 + 64; ++k)
          for (int64_t r = r0; r < r0 + 64; ++r) xT[(size_t)k * Mp + r] = x[r * dp + k];
  }
  bool any_col = false;
  for (int64_t c = 0; c < N && !any_col; ++c) any_col = col_coef[c] != 0.f;
  std::fill(dyT_parts, dyT_parts + (size_t)nt * dp * Np, 0.f);
  std::fill(dx, dx + (size_t)Mp * dp, 0.f);
  const int64_t nrb = (M + tl.R - 1) / tl.R;
  std::vector<double> acc_t(nt, 0.0);
  std::vector<int64_t> next(1, 0);
  lowp_parallel(nt, [&](int tid) {
    std::vector<float> S((size_t)tl.R * tl.W);
    std::vector<bf16> A((size_t)tl.R * tl.W), V((size_t)tl.R * tl.W);
    float* dyT = dyT_parts + (size_t)tid * dp * Np;
    double acc = 0.0;
    for (;;) {
      int64_t rb;
#pragma omp atomic capture
      rb = next[0]++;
      if (rb >= nrb) break;
      const int64_t r0 = rb * tl.R, R = std::min(tl.R, M - r0), Rg = std::min(tl.R, Mp - r0);
      for (int64_t c0 = 0; c0 < N; c0 += tl.W) {
        const int64_t W = std::min(tl.W, N - c0), Wg = std::min(tl.W, Np - c0);
        lowp_scores(x, ynt.data(), dp, r0, Rg, c0, Wg, S.data());
        // dZ over the valid R x W region, in place; the padded region holds exact zeros (zero rows/columns).
        acc += dz_full(S.data(), Wg, S.data(), Wg, r0, R, c0, W, scale, row_coef, lse_row, col_coef, lse_col, any_col,
                       w_pos, ro, rd, co, cd);
        for (int64_t r = 0; r < Rg; ++r) to_bf16_row(S.data() + r * Wg, Wg, A.data() + r * Wg);
        to_bf16_vnni(S.data(), Rg, Wg, V.data());
        for (int64_t db = 0; db < dp / 64; ++db)
          ccr::lowp::brgemm(Rg, 64, Wg, Wg, 64, dp, c0 > 0, A.data(), ynn.data() + (size_t)db * Np * 64 + c0 * 64,
                            dx + r0 * dp + db * 64);
        for (int64_t jb = 0; jb < Wg / 64; ++jb)
          ccr::lowp::brgemm(dp, 64, Rg, Mp, 64, Np, true, xT.data() + r0, V.data() + jb * Rg * 64,
                            dyT + c0 + jb * 64);
      }
    }
    acc_t[tid] = acc;
  });
  double tot = 0.0;
  for (int t = 0; t < nt; ++t) tot += acc_t[t];
  *dscale = (float)tot;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < Mp * dp; ++i) dx[i] *= scale;
#pragma omp for schedule(static)
    for (int64_t n0 = 0; n0 < Np; n0 += 64)  // dy = scale · Σ_t dyT_tᵀ, in 64 x 64 blocks
      for (int64_t k0 = 0; k0 < dp; k0 += 64) {
        float blk[64][64];
        for (int64_t k = 0; k < 64; ++k) {
          float row[64];
          for (int64_t n = 0; n < 64; ++n) row[n] = 0.f;
          for (int t = 0; t < nt; ++t) {
            const float* src = dyT_parts + ((size_t)t * dp + k0 + k) * Np + n0;
            for (int64_t n = 0; n < 64; ++n) row[n] += src[n];
          }
          for (int64_t n = 0; n < 64; ++n) blk[n][k] = row[n];
        }
        for (int64_t n = 0; n < 64; ++n)
          for (int64_t k = 0; k < 64; ++k) dy[(n0 + n) * dp + k0 + k] = scale * blk[n][k];
      }
  }
}

// VSE++ triplet forward on bf16 operands (padded a, b [Np, dp]): S = b aᵀ from the bf16 GEMM, then the epilogue
// of the fp32 blas kernel (hardest negative per row j != i and per column, ties to the lower index; or hinge sums).
// The diagonal comes from diagonal tiles of the same GEMM.
void lowp_triplet_fwd(const bf16* a, const bf16* b, int64_t n, int64_t Np, int64_t dp, float margin, bool maxv,
                      float* row_cost, float* col_cost, int64_t* row_idx, int64_t* col_idx, Tiles tl) {
  const int nt = ccr::omp_threads();
  const std::vector<bf16> apk = lowp_pack_nt(a, Np, dp, nt);
  const int64_t R = tl.R, W = tl.W, nrb = (n + R - 1) / R;
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> diag(n);
  std::vector<int64_t> next(2, 0);
  lowp_parallel(nt, [&](int) {
    std::vector<float> buf((size_t)R * R);
    for (;;) {
      int64_t rb;
#pragma omp atomic capture
      rb = next[0]++;
      if (rb >= nrb) break;
      const int64_t r0 = rb * R, m = std::min(R, n - r0), g = std::min(R, Np - r0);
      lowp_scores(b, apk.data(), dp, r0, g, r0, g, buf.data());
      for (int64_t r = 0; r < m; ++r) diag[r0 + r] = buf[r * g + r];
    }
  });
  std::vector<float> cbest((size_t)nt * n, maxv ? ninf : 0.f);
  std::vector<int64_t> cidx((size_t)nt * n, -1);
  lowp_parallel(nt, [&](int tid) {
    float* cb = cbest.data() + (size_t)tid * n;
    int64_t* ci = cidx.data() + (size_t)tid * n;
    std::vector<float> buf((size_t)R * W);
    for (;;) {
      int64_t rb;
#pragma omp atomic capture
      rb = next[1]++;
      if (rb >= nrb) break;
      const int64_t r0 = rb * R, m = std::min(R, n - r0), g = std::min(R, Np - r0);
      std::vector<float> rbest(m, maxv ? ninf : 0.f);
      std::vector<int64_t> ridx(m, -1);
      for (int64_t c0 = 0; c0 < n; c0 += W) {
        const int64_t w = std::min(W, n - c0), wg = std::min(W, Np - c0);
        lowp_scores(b, apk.data(), dp, r0, g, c0, wg, buf.data());
        for (int64_t r = 0; r < m; ++r) {
          const int64_t i = r0 + r;
          const float* sr = buf.data() + r * wg;
          if (maxv) {
            float best = rbest[r];
            int64_t bi = ridx[r];
            for (int64_t j = 0; j < w; ++j) {
              const int64_t c = c0 + j;
              if (c == i) continue;
              if (sr[j] > best || bi < 0 || (sr[j] != sr[j] && best == best)) {
                best = sr[j];
                bi = c;
              }
              if (sr[j] > cb[c] || ci[c] < 0 || (sr[j] == cb[c] && i < ci[c])) {
                cb[c] = sr[j];
                ci[c] = i;
              }
            }
            rbest[r] = best;
            ridx[r] = bi;
          } else {
            float acc = 0.f;
            const float di = diag[i];
            for (int64_t j = 0; j < w; ++j) {
              const int64_t c = c0 + j;
              if (c == i) continue;
              acc += ccr::hinge(margin + sr[j] - di);
              cb[c] += ccr::hinge(margin + sr[j] - diag[c]);
            }
            rbest[r] += acc;
          }
        }
      }
      for (int64_t r = 0; r < m; ++r) {
        const int64_t i = r0 + r;
        row_idx[i] = maxv ? ridx[r] : -1;
        row_cost[i] = maxv ? ccr::hinge(margin + rbest[r] - diag[i]) : rbest[r];
      }
    }
  });
  for (int64_t c = 0; c < n; ++c) {
    if (maxv) {
      float best = ninf;
      int64_t bi = -1;
      for (int t = 0; t < nt; ++t) {
        const float v = cbest[(size_t)t * n + c];
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
      float acc = 0.f;
      for (int t = 0; t < nt; ++t) acc += cbest[(size_t)t * n + c];
      col_cost[c] = acc;
      col_idx[c] = -1;
    }
  }
}

void blas_triplet_forward_bf16(std::uintptr_t a, std::uintptr_t b, int64_t n, int64_t Np, int64_t dp, double margin,
                               bool max_violation, std::uintptr_t row_cost, std::uintptr_t col_cost,
                               std::uintptr_t row_idx, std::uintptr_t col_idx) {
  ccr::lowp::check();
  CCR_CHECK_ARG(n >= 2 && Np >= n && Np % 64 == 0 && dp >= 64 && dp % 64 == 0,
                "blas bf16 triplet: need B >= 2 and Np, dp multiples of 64 (padded operands)");
  lowp_triplet_fwd(ccr::as_ptr<const bf16>(a), ccr::as_ptr<const bf16>(b), n, Np, dp, (float)margin, max_violation,
                   ccr::as_ptr<float>(row_cost), ccr::as_ptr<float>(col_cost), ccr::as_ptr<int64_t>(row_idx),
                   ccr::as_ptr<int64_t>(col_idx), lowp_tiles(0, 0));
}

void lowp_check_shapes(int64_t M, int64_t N, int64_t Mp, int64_t Np, int64_t dp) {
  ccr::lowp::check();
  CCR_CHECK_ARG(M >= 1 && N >= 1 && Mp >= M && Np >= N && Mp % 64 == 0 && Np % 64 == 0 && dp >= 64 && dp % 64 == 0,
                "blas bf16: need M, N >= 1 and Mp, Np, dp multiples of 64 (padded operands)");
}

void blas_contrastive_forward_bf16(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t Mp, int64_t Np,
                                   int64_t dp, double scale, int64_t ro, int64_t rd, int64_t co, int64_t cd,
                                   bool compute_col, std::uintptr_t lse_row, std::uintptr_t lse_col,
                                   std::uintptr_t pos_row, std::uintptr_t pos_col, int64_t tile_m, int64_t tile_n) {
  lowp_check_shapes(M, N, Mp, Np, dp);
  CCR_CHECK_ARG(ro >= 0 && co >= 0 && rd >= 1 && cd >= 1, "blas contrastive: bad positive rule");
  lowp_contrastive_fwd(ccr::as_ptr<const bf16>(x), ccr::as_ptr<const bf16>(y), M, N, Mp, Np, dp, (float)scale, ro, rd,
                       co, cd, compute_col, ccr::as_ptr<float>(lse_row), ccr::as_ptr<float>(lse_col),
                       ccr::as_ptr<float>(pos_row), ccr::as_ptr<float>(pos_col), lowp_tiles(tile_m, tile_n));
}

void blas_contrastive_backward_bf16(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t Mp, int64_t Np,
                                    int64_t dp, double scale, std::uintptr_t lse_row, std::uintptr_t lse_col,
                                    std::uintptr_t row_coef, std::uintptr_t col_coef, double w_pos, int64_t ro,
                                    int64_t rd, int64_t co, int64_t cd, std::uintptr_t dx, std::uintptr_t dy,
                                    std::uintptr_t dscale, std::uintptr_t dyT_parts, int64_t tile_m, int64_t tile_n) {
  lowp_check_shapes(M, N, Mp, Np, dp);
  CCR_CHECK_ARG(ro >= 0 && co >= 0 && rd >= 1 && cd >= 1, "blas contrastive: bad positive rule");
  lowp_contrastive_bwd(ccr::as_ptr<const bf16>(x), ccr::as_ptr<const bf16>(y), M, N, Mp, Np, dp, (float)scale,
                       ccr::as_ptr<const float>(lse_row), ccr::as_ptr<const float>(lse_col),
                       ccr::as_ptr<const float>(row_coef), ccr::as_ptr<const float>(col_coef), (float)w_pos, ro, rd, co,
                       cd, ccr::as_ptr<float>(dx), ccr::as_ptr<float>(dy), ccr::as_ptr<float>(dscale),
                       ccr::as_ptr<float>(dyT_parts), lowp_tiles(tile_m, tile_n));
}

void set_lowp(std::uintptr_t brgemm_bf16, std::uintptr_t release) {
  ccr::lowp::g_brgemm_bf16 = reinterpret_cast<ccr::lowp::brgemm_t>(brgemm_bf16);
  ccr::lowp::g_release = reinterpret_cast<ccr::lowp::release_t>(release);
}

// ------------------------------------------------------------------------------------------------ exported
void set_gemm(std::uintptr_t sgemm, std::uintptr_t dgemm) {
  ccr::blas::g_sgemm = reinterpret_cast<sgemm_t>(sgemm);
  ccr::blas::g_dgemm = reinterpret_cast<dgemm_t>(dgemm);
}

void blas_contrastive_forward(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx,
                              int64_t ldy, int dtype, double scale, int64_t ro, int64_t rd, int64_t co, int64_t cd,
                              bool compute_col, std::uintptr_t lse_row, std::uintptr_t lse_col, std::uintptr_t pos_row,
                              std::uintptr_t pos_col, std::uintptr_t keep, int64_t tile_m, int64_t tile_n) {
  check_gemm(dtype);
  CCR_CHECK_ARG(M >= 1 && N >= 1 && d >= 1 && ldx >= d && ldy >= d, "blas contrastive: need M, N, d >= 1, ld >= d");
  CCR_CHECK_ARG(ro >= 0 && co >= 0 && rd >= 1 && cd >= 1, "blas contrastive: bad positive rule");
  check_int(ldx, "ldx");
  check_int(ldy, "ldy");
  check_int(N, "N");
  const Tiles tl = tiles(tile_m, tile_n, M, N);
  if (dtype == ccr::kFloat32)
    contrastive_fwd<float>(ccr::as_ptr<const float>(x), ccr::as_ptr<const float>(y), M, N, d, ldx, ldy, (float)scale,
                           ro, rd, co, cd, compute_col, ccr::as_ptr<float>(lse_row), ccr::as_ptr<float>(lse_col),
                           ccr::as_ptr<float>(pos_row), ccr::as_ptr<float>(pos_col), ccr::as_ptr<float>(keep), tl);
  else
    contrastive_fwd<double>(ccr::as_ptr<const double>(x), ccr::as_ptr<const double>(y), M, N, d, ldx, ldy, scale, ro,
                            rd, co, cd, compute_col, ccr::as_ptr<double>(lse_row), ccr::as_ptr<double>(lse_col),
                            ccr::as_ptr<double>(pos_row), ccr::as_ptr<double>(pos_col), ccr::as_ptr<double>(keep),
                            tl);
}

void blas_contrastive_backward(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx,
                               int64_t ldy, int dtype, double scale, std::uintptr_t lse_row, std::uintptr_t lse_col,
                               std::uintptr_t row_coef, std::uintptr_t col_coef, double w_pos, int64_t ro, int64_t rd,
                               int64_t co, int64_t cd, std::uintptr_t dx, std::uintptr_t dy, std::uintptr_t dscale,
                               std::uintptr_t saved, std::uintptr_t dy_parts, int64_t tile_m, int64_t tile_n) {
  check_gemm(dtype);
  CCR_CHECK_ARG(M >= 1 && N >= 1 && d >= 1 && ldx >= d && ldy >= d, "blas contrastive: need M, N, d >= 1, ld >= d");
  CCR_CHECK_ARG(ro >= 0 && co >= 0 && rd >= 1 && cd >= 1, "blas contrastive: bad positive rule");
  check_int(M, "M");
  check_int(N, "N");
  check_int(ldx, "ldx");
  check_int(ldy, "ldy");
  const Tiles tl = tiles(tile_m, tile_n, M, N);
  if (dtype == ccr::kFloat32)
    contrastive_bwd<float>(ccr::as_ptr<const float>(x), ccr::as_ptr<const float>(y), M, N, d, ldx, ldy, (float)scale,
                           ccr::as_ptr<const float>(lse_row), ccr::as_ptr<const float>(lse_col),
                           ccr::as_ptr<const float>(row_coef), ccr::as_ptr<const float>(col_coef), (float)w_pos, ro,
                           rd, co, cd, ccr::as_ptr<float>(dx), ccr::as_ptr<float>(dy), ccr::as_ptr<float>(dscale),
                           ccr::as_ptr<const float>(saved), ccr::as_ptr<float>(dy_parts), tl);
  else
    contrastive_bwd<double>(ccr::as_ptr<const double>(x), ccr::as_ptr<const double>(y), M, N, d, ldx, ldy, scale,
                            ccr::as_ptr<const double>(lse_row), ccr::as_ptr<const double>(lse_col),
                            ccr::as_ptr<const double>(row_coef), ccr::as_ptr<const double>(col_coef), w_pos, ro, rd,
                            co, cd, ccr::as_ptr<double>(dx), ccr::as_ptr<double>(dy), ccr::as_ptr<double>(dscale),
                            ccr::as_ptr<const double>(saved), ccr::as_ptr<double>(dy_parts), tl);
}

}  // namespace

void register_cpu_blas_contrastive(py::module_& m) {
  m.def("blas_set_lowp", &set_lowp,
        "Register the bf16 GEMM (at::native::cpublas::brgemm for BFloat16 -> float, VNNI B) and its release "
        "function (lowp_gemm.h).", py::arg("brgemm_bf16"), py::arg("release"));
  m.def("blas_triplet_forward_bf16", &blas_triplet_forward_bf16,
        "VSE++ triplet forward on bf16 operands padded to [Np, dp] (multiples of 64): S = b aᵀ from the bf16 GEMM, "
        "fp32 selection; fp32 costs, int64 indices.",
        py::arg("a"), py::arg("b"), py::arg("n"), py::arg("Np"), py::arg("dp"), py::arg("margin"),
        py::arg("max_violation"), py::arg("row_cost"), py::arg("col_cost"), py::arg("row_idx"), py::arg("col_idx"),
        py::call_guard<py::gil_scoped_release>());
  m.def("blas_contrastive_forward_bf16", &blas_contrastive_forward_bf16,
        "Contrastive forward on bf16 operands padded to [Mp, dp] / [Np, dp] (multiples of 64): bf16 GEMM tiles, "
        "fp32 epilogues; fp32 outputs.",
        py::arg("x"), py::arg("y"), py::arg("M"), py::arg("N"), py::arg("Mp"), py::arg("Np"), py::arg("dp"),
        py::arg("scale"), py::arg("row_off"), py::arg("row_div"), py::arg("col_off"), py::arg("col_div"),
        py::arg("compute_col"), py::arg("lse_row"), py::arg("lse_col"), py::arg("pos_row"), py::arg("pos_col"),
        py::arg("tile_m") = 0, py::arg("tile_n") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("blas_contrastive_backward_bf16", &blas_contrastive_backward_bf16,
        "Contrastive backward on padded bf16 operands: dx [Mp, dp], dy [Np, dp] fp32; dyT_parts: a "
        "[threads, dp, Np] fp32 workspace.",
        py::arg("x"), py::arg("y"), py::arg("M"), py::arg("N"), py::arg("Mp"), py::arg("Np"), py::arg("dp"),
        py::arg("scale"), py::arg("lse_row"), py::arg("lse_col"), py::arg("row_coef"), py::arg("col_coef"),
        py::arg("w_pos"), py::arg("row_off"), py::arg("row_div"), py::arg("col_off"), py::arg("col_div"),
        py::arg("dx"), py::arg("dy"), py::arg("dscale"), py::arg("dyT_parts"), py::arg("tile_m") = 0,
        py::arg("tile_n") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("blas_set_gemm", &set_gemm,
        "Register the cblas_sgemm / cblas_dgemm function pointers (LP64, row-major cblas signature) the blas "
        "kernels call; the library must be set to 1 thread (the kernels parallelise over tiles).",
        py::arg("sgemm"), py::arg("dgemm"));
  m.def("blas_contrastive_forward", &blas_contrastive_forward,
        "Contrastive forward over GEMM tiles (docs/interop.md); keep != 0: also write the raw scores x yᵀ [M, N].",
        py::arg("x"), py::arg("y"), py::arg("M"), py::arg("N"), py::arg("d"), py::arg("ldx"), py::arg("ldy"),
        py::arg("dtype"), py::arg("scale"), py::arg("row_off"), py::arg("row_div"), py::arg("col_off"),
        py::arg("col_div"), py::arg("compute_col"), py::arg("lse_row"), py::arg("lse_col"), py::arg("pos_row"),
        py::arg("pos_col"), py::arg("keep") = 0, py::arg("tile_m") = 0, py::arg("tile_n") = 0,
        py::call_guard<py::gil_scoped_release>());
  m.def("blas_contrastive_backward", &blas_contrastive_backward,
        "Contrastive backward over GEMM tiles; saved != 0: the forward's raw scores x yᵀ [M, N] (read only); "
        "dy_parts != 0: a [threads, N, d] workspace for one pass with per-thread dy partials (else two passes).",
        py::arg("x"), py::arg("y"), py::arg("M"), py::arg("N"), py::arg("d"), py::arg("ldx"), py::arg("ldy"),
        py::arg("dtype"), py::arg("scale"), py::arg("lse_row"), py::arg("lse_col"), py::arg("row_coef"),
        py::arg("col_coef"), py::arg("w_pos"), py::arg("row_off"), py::arg("row_div"), py::arg("col_off"),
        py::arg("col_div"), py::arg("dx"), py::arg("dy"), py::arg("dscale"), py::arg("saved") = 0,
        py::arg("dy_parts") = 0, py::arg("tile_m") = 0, py::arg("tile_n") = 0, py::call_guard<py::gil_scoped_release>());
}

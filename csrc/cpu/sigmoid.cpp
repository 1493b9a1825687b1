// Sigmoid (SigLIP) loss on the CPU: the "cpu" backend (our register-blocked tile GEMM, gemm_tile.h) and the "blas"
// backend (the registered vendor cblas GEMM, blas_gemm.h) share one tile loop. Contract: ccr_fast/ops/sigmoid.py.
//
//   Z[r, c] = scale * (x_r . y_c) + bias,  label = +1 if positives && c / k == r + pos_off, else -1
//   loss    = weight * sum softplus(-label * Z)
//   G       = -weight * label * sigmoid(-label * Z)
//   dx = scale * G y,  dy = scale * G^T x,  dscale = sum G * (x y^T),  dbias = sum G
//
// OpenMP threads own row blocks of R rows; per column tile of W columns a thread forms the raw scores S (one GEMM),
// runs the fused epilogue (softplus sum, G, the dscale/dbias partials) while S is in cache and, when the gradients
// are wanted, dx[rows] += G y[cols] and dy_part[thread][cols] += G^T x[rows] (two GEMMs). The per-thread dy partials
// (a [threads, N, d] workspace allocated by the caller) are summed at the end. Memory: O(threads * (R*W + N*d)).
//
// float epilogue: 16-lane vector code (GCC vector extensions, cloned for AVX-512 / AVX2 / baseline) with our own exp
// (|rel err| ~ 1e-7) and log1p on [0, 1] (atanh series, |rel err| ~ 1e-8); every entry is a negative there, the
// (at most k per row) positive entries are done separately in double. double: scalar std:: functions.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "blas_gemm.h"
#include "common.h"
#include "cpu_util.h"
#include "gemm_tile.h"
#include "lowp_gemm.h"

namespace py = pybind11;

namespace {

using std::int64_t;

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v16f __attribute__((vector_size(64)));
typedef std::int32_t v16i __attribute__((vector_size(64)));

#define CCR_SIG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=haswell", "default")))

inline __attribute__((always_inline)) v16f splat(float a) { return v16f{} + a; }

// exp(x) for x <= 0 (the only use here): Cody-Waite reduction x = n ln2 + r, degree-6 Taylor polynomial of e^r.
inline __attribute__((always_inline)) v16f exp_neg(v16f x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  const v16f shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  const v16f t = x * 1.44269504088896341f + shifter;
  const v16f n = t - shifter;
  const v16f r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  v16f p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v16i bits = ((v16i)t - (v16i)shifter + 127) << 23;
  return p * (v16f)bits;
}

// log1p(e) for e in [0, 1]: 2 atanh(u), u = e / (2 + e) in [0, 1/3], series to u^15.
inline __attribute__((always_inline)) v16f log1p_unit(v16f e) {
  const v16f u = e / (e + 2.0f);
  const v16f v = u * u;
  v16f p = splat(1.0f / 15.0f);
  p = p * v + 1.0f / 13.0f;
  p = p * v + 1.0f / 11.0f;
  p = p * v + 1.0f / 9.0f;
  p = p * v + 1.0f / 7.0f;
  p = p * v + 1.0f / 5.0f;
  p = p * v + 1.0f / 3.0f;
  p = p * v + 1.0f;
  return 2.0f * u * p;
}

struct RowSums {
  double loss = 0.0, dscale = 0.0, dbias = 0.0;
};

// 16 entries that are all negatives (label -1): softplus(z) into l, g = weight * sigmoid(z) into *gv, g*raw into
// ds, g into db (lanes where valid = 0 add nothing).
inline __attribute__((always_inline)) void neg_lanes(v16f raw, v16f valid, float scale, float bias, float weight,
                                                     v16f* gv, v16f& l, v16f& ds, v16f& db) {
  const v16f z = raw * scale + bias;
  const v16f az = z < 0.f ? -z : z;
  const v16f e = exp_neg(-az);
  const v16f sp = (z > 0.f ? z : splat(0.f)) + log1p_unit(e);
  const v16f inv = 1.0f / (e + 1.0f);
  const v16f sig = z >= 0.f ? inv : e * inv;
  *gv = sig * weight;
  l += sp * valid;
  ds += *gv * raw * valid;
  db += *gv * valid;
}

// n entries that are all negatives: softplus(z) summed, g = weight * sigmoid(z) stored, sum g*s and sum g
// accumulated. n may be any size (the tail goes through a padded vector).
CCR_SIG_CLONES void negatives(const float* s, float* g, int64_t n, float scale, float bias, float weight,
                              RowSums* acc) {
  v16f l = splat(0.f), ds = splat(0.f), db = splat(0.f);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    v16f raw, gv;
    std::memcpy(&raw, s + j, sizeof raw);
    neg_lanes(raw, splat(1.f), scale, bias, weight, &gv, l, ds, db);
    std::memcpy(g + j, &gv, sizeof gv);
  }
  if (j < n) {
    const int64_t rest = n - j;
    float buf[16] = {0}, msk[16] = {0};
    for (int64_t q = 0; q < rest; ++q) {
      buf[q] = s[j + q];
      msk[q] = 1.f;
    }
    v16f raw, valid, gv;
    std::memcpy(&raw, buf, sizeof raw);
    std::memcpy(&valid, msk, sizeof valid);
    neg_lanes(raw, valid, scale, bias, weight, &gv, l, ds, db);
    std::memcpy(buf, &gv, sizeof gv);
    for (int64_t q = 0; q < rest; ++q) g[j + q] = buf[q];
  }
  double a = 0.0, b = 0.0, c = 0.0;
  for (int q = 0; q < 16; ++q) {
    a += l[q];
    b += ds[q];
    c += db[q];
  }
  acc->loss += a;
  acc->dscale += b;
  acc->dbias += c;
}

inline double softplus(double t) { return std::max(t, 0.0) + std::log1p(std::exp(-std::fabs(t))); }
inline double sigmoid(double t) {
  if (t >= 0) return 1.0 / (1.0 + std::exp(-t));
  const double e = std::exp(t);
  return e / (1.0 + e);
}

// One entry in double: t = -label * z; loss softplus(t), g = -weight * label * sigmoid(t).
template <typename T>
inline T entry(T raw, double scale, double bias, double weight, bool pos, RowSums* acc) {
  const double z = scale * (double)raw + bias, label = pos ? 1.0 : -1.0, t = -label * z;
  const double g = -weight * label * sigmoid(t);
  acc->loss += softplus(t);
  acc->dscale += g * (double)raw;
  acc->dbias += g;
  return (T)g;
}

// The epilogue of one tile row: raw scores s[0, W), gradient g[0, W); positives at local columns [lo, hi).
void tile_row(const float* s, float* g, int64_t W, int64_t lo, int64_t hi, double scale, double bias, double weight,
              RowSums* acc) {
  negatives(s, g, lo, (float)scale, (float)bias, (float)weight, acc);
  for (int64_t j = lo; j < hi; ++j) g[j] = entry(s[j], scale, bias, weight, true, acc);
  negatives(s + hi, g + hi, W - hi, (float)scale, (float)bias, (float)weight, acc);
}
void tile_row(const double* s, double* g, int64_t W, int64_t lo, int64_t hi, double scale, double bias,
              double weight, RowSums* acc) {
  for (int64_t j = 0; j < W; ++j) g[j] = entry(s[j], scale, bias, weight, j >= lo && j < hi, acc);
}

// The two GEMM sources.
struct VendorGemm {  // "blas"
  template <typename T>
  static void scores(const T* x, int64_t ldx, int64_t R, const T* y, int64_t ldy, int64_t W, int64_t d, T* S) {
    ccr::blas::gemm(false, true, R, W, d, T(1), x, ldx, y, ldy, T(0), S, W);
  }
  template <typename T>  // dx[R, d] += G[R, W] y[W, d]
  static void grad_rows(const T* G, int64_t R, int64_t W, const T* y, int64_t ldy, int64_t d, T* dx, T*) {
    ccr::blas::gemm(false, false, R, d, W, T(1), G, W, y, ldy, T(1), dx, d);
  }
  template <typename T>  // dy[W, d] += G[R, W]^T x[R, d]
  static void grad_cols(const T* G, int64_t R, int64_t W, const T* x, int64_t ldx, int64_t d, T* dy, T*) {
    ccr::blas::gemm(true, false, W, d, R, T(1), G, W, x, ldx, T(1), dy, d);
  }
};
struct TileGemm {  // "cpu"
  template <typename T>
  static void scores(const T* x, int64_t ldx, int64_t R, const T* y, int64_t ldy, int64_t W, int64_t d, T* S) {
    ccr::score_tile(x, ldx, R, y, ldy, W, d, S, W);
  }
  template <typename T>
  static void grad_rows(const T* G, int64_t R, int64_t W, const T* y, int64_t ldy, int64_t d, T* dx, T*) {
    ccr::gemm_acc(G, W, R, W, y, ldy, d, dx, d);
  }
  template <typename T>
  static void grad_cols(const T* G, int64_t R, int64_t W, const T* x, int64_t ldx, int64_t d, T* dy, T* Gt) {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < W; ++c) Gt[c * R + r] = G[r * W + c];
    ccr::gemm_acc(Gt, R, W, R, x, ldx, d, dy, d);
  }
};

struct Args {
  int64_t M, N, d, ldx, ldy, k, pos_off, R, W;
  bool positives, need_grad;
  double scale, bias, weight;
};

template <typename T, typename Gemm>
void run(const T* x, const T* y, const Args& a, T* out3, T* dx, T* dy, T* dy_parts) {
  const int nt = ccr::omp_threads();
  const int64_t nrb = (a.M + a.R - 1) / a.R;
  if (a.need_grad) std::fill(dy_parts, dy_parts + (size_t)nt * a.N * a.d, T(0));
  double loss = 0.0, dscale = 0.0, dbias = 0.0;
#pragma omp parallel num_threads(nt) reduction(+ : loss, dscale, dbias)
  {
    std::vector<T> S((size_t)a.R * a.W), G((size_t)a.R * a.W), Gt(a.need_grad ? (size_t)a.R * a.W : 0);
    T* part = a.need_grad ? dy_parts + (size_t)ccr::omp_thread_id() * a.N * a.d : nullptr;
#pragma omp for schedule(dynamic, 1)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * a.R, R = std::min(a.R, a.M - r0);
      if (a.need_grad) std::fill(dx + r0 * a.d, dx + (r0 + R) * a.d, T(0));
      for (int64_t c0 = 0; c0 < a.N; c0 += a.W) {
        const int64_t W = std::min(a.W, a.N - c0);
        Gemm::scores(x + r0 * a.ldx, a.ldx, R, y + c0 * a.ldy, a.ldy, W, a.d, S.data());
        RowSums acc;
        for (int64_t r = 0; r < R; ++r) {
          int64_t lo = 0, hi = 0;
          if (a.positives) {
            const int64_t first = (r0 + r + a.pos_off) * a.k - c0;
            lo = std::min(std::max<int64_t>(first, 0), W);
            hi = std::min(std::max<int64_t>(first + a.k, 0), W);
          }
          tile_row(S.data() + r * W, G.data() + r * W, W, lo, hi, a.scale, a.bias, a.weight, &acc);
        }
        loss += acc.loss;
        dscale += acc.dscale;
        dbias += acc.dbias;
        if (a.need_grad) {
          Gemm::grad_rows(G.data(), R, W, y + c0 * a.ldy, a.ldy, a.d, dx + r0 * a.d, (T*)nullptr);
          Gemm::grad_cols(G.data(), R, W, x + r0 * a.ldx, a.ldx, a.d, part + c0 * a.d, Gt.data());
        }
      }
    }
  }
  out3[0] = (T)(a.weight * loss);
  out3[1] = (T)dscale;
  out3[2] = (T)dbias;
  if (!a.need_grad) return;
  const T s = (T)a.scale;
  const int64_t nd = a.N * a.d, md = a.M * a.d;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < nd; ++i) {
    T v = T(0);
    for (int t = 0; t < nt; ++t) v += dy_parts[(size_t)t * nd + i];
    dy[i] = s * v;
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < md; ++i) dx[i] *= s;
}

void sigmoid_forward(bool vendor, std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx,
                     int64_t ldy, int dtype, double scale, double bias, int64_t k, int64_t pos_off, bool positives,
                     double weight, bool need_grad, std::uintptr_t out3, std::uintptr_t dx, std::uintptr_t dy,
                     std::uintptr_t dy_parts, int64_t tile_m, int64_t tile_n) {
  CCR_CHECK_ARG(dtype == ccr::kFloat32 || dtype == ccr::kFloat64,
                std::string("sigmoid: CPU kernels take float32 or float64, got dtype ") + ccr::dtype_name(dtype));
  CCR_CHECK_ARG(M >= 1 && N >= 1 && d >= 1, "sigmoid: need M, N, d >= 1");
  CCR_CHECK_ARG(ldx >= d && ldy >= d, "sigmoid: row strides ldx, ldy must be >= d");
  CCR_CHECK_ARG(k >= 1, "sigmoid: k (texts per row item) must be >= 1");
  CCR_CHECK_ARG(!need_grad || (dx != 0 && dy != 0 && dy_parts != 0), "sigmoid: need_grad needs dx, dy, dy_parts");
  if (vendor) {
    ccr::blas::check_gemm(dtype);
    for (int64_t v : {M, N, d, ldx, ldy}) ccr::blas::check_int(v, "a size or stride");
  }
  Args a{M, N, d, ldx, ldy, k, pos_off, 0, 0, positives, need_grad, scale, bias, weight};
  a.R = std::min<int64_t>(tile_m > 0 ? tile_m : (vendor ? 128 : 64), M);
  a.W = std::min<int64_t>(tile_n > 0 ? tile_n : (vendor ? 512 : 256), N);
  if (dtype == ccr::kFloat32) {
    auto f = vendor ? &run<float, VendorGemm> : &run<float, TileGemm>;
    f(ccr::as_ptr<const float>(x), ccr::as_ptr<const float>(y), a, ccr::as_ptr<float>(out3), ccr::as_ptr<float>(dx),
      ccr::as_ptr<float>(dy), ccr::as_ptr<float>(dy_parts));
  } else {
    auto f = vendor ? &run<double, VendorGemm> : &run<double, TileGemm>;
    f(ccr::as_ptr<const double>(x), ccr::as_ptr<const double>(y), a, ccr::as_ptr<double>(out3),
      ccr::as_ptr<double>(dx), ccr::as_ptr<double>(dy), ccr::as_ptr<double>(dy_parts));
  }
}

// ------------------------------------------------------------------------------------------------ bf16 inputs
// "blas" with bf16 operands: the bf16 GEMM of lowp_gemm.h (bf16 products, fp32 accumulation, fp32 tiles) and the
// same fp32 epilogue. Operands arrive zero-padded: x [Mp, dp], y [Np, dp] (multiples of 64), so every GEMM call has
// N = 64; the epilogue reads only the valid region and G is zero elsewhere. G is rounded once to bf16 as the operand
// of dx[rows] += G·y[cols] (row-major) and dyT[:, cols] += x[rows]ᵀ·G (VNNI-packed, per-thread fp32 partials).
using ccr::lowp::bf16;

void g_to_bf16(const float* G, int64_t Rg, int64_t Wg, bf16* A, bf16* V) {
  for (int64_t i = 0; i < Rg * Wg; ++i) A[i] = ccr::lowp::to_bf16(G[i]);
  for (int64_t jb = 0; jb < Wg / 64; ++jb)  // V per 64-column block: [Rg/2][64][2]
    for (int64_t k2 = 0; k2 < Rg / 2; ++k2)
      for (int64_t n = 0; n < 64; ++n) {
        bf16* o = V + jb * Rg * 64 + (k2 * 64 + n) * 2;
        o[0] = A[(2 * k2) * Wg + jb * 64 + n];
        o[1] = A[(2 * k2 + 1) * Wg + jb * 64 + n];
      }
}

void lowp_run(const bf16* x, const bf16* y, const Args& a, int64_t Mp, int64_t Np, int64_t dp, float* out3, float* dx,
              float* dy, float* dyT_parts) {
  ccr::lowp::check();
  const int nt = ccr::omp_threads();
  std::vector<bf16> ynt((size_t)Np * dp), ynn(a.need_grad ? (size_t)Np * dp : 0), xT(a.need_grad ? (size_t)dp * Mp : 0);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t b = 0; b < Np / 64; ++b) ccr::lowp::pack_nt(y, dp, b * 64, dp, ynt.data() + (size_t)b * 64 * dp);
    if (a.need_grad) {
#pragma omp for schedule(static) nowait
      for (int64_t db = 0; db < dp / 64; ++db)
        ccr::lowp::pack_nn(y, dp, Np, db * 64, ynn.data() + (size_t)db * Np * 64);
#pragma omp for schedule(static)
      for (int64_t k = 0; k < dp; ++k)
        for (int64_t r = 0; r < Mp; ++r) xT[(size_t)k * Mp + r] = x[r * dp + k];
    }
  }
  if (a.need_grad) {
    std::fill(dyT_parts, dyT_parts + (size_t)nt * dp * Np, 0.f);
    std::fill(dx, dx + (size_t)Mp * dp, 0.f);
  }
  const int64_t nrb = (a.M + a.R - 1) / a.R;
  std::vector<double> tot((size_t)nt * 3, 0.0);
  std::string err;
  bool failed = false;
  int64_t next = 0;
#pragma omp parallel num_threads(nt)
  {
    const int tid = ccr::omp_thread_id();
    try {
      std::vector<float> S((size_t)a.R * a.W), G((size_t)a.R * a.W);
      std::vector<bf16> A(a.need_grad ? (size_t)a.R * a.W : 0), V(a.need_grad ? (size_t)a.R * a.W : 0);
      float* dyT = a.need_grad ? dyT_parts + (size_t)tid * dp * Np : nullptr;
      RowSums acc;
      for (;;) {  // a shared counter, not an omp for: a throwing thread must not leave the others at a barrier
        int64_t rb;
#pragma omp atomic capture
        rb = next++;
        if (rb >= nrb) break;
        const int64_t r0 = rb * a.R, R = std::min(a.R, a.M - r0), Rg = std::min(a.R, Mp - r0);
        for (int64_t c0 = 0; c0 < a.N; c0 += a.W) {
          const int64_t W = std::min(a.W, a.N - c0), Wg = std::min(a.W, Np - c0);
          for (int64_t jb = 0; jb < Wg / 64; ++jb)
            ccr::lowp::brgemm(Rg, 64, dp, dp, 64, Wg, false, x + r0 * dp, ynt.data() + (c0 + jb * 64) * dp,
                              S.data() + jb * 64);
          std::fill(G.begin(), G.begin() + Rg * Wg, 0.f);
          for (int64_t r = 0; r < R; ++r) {
            int64_t lo = 0, hi = 0;
            if (a.positives) {
              const int64_t first = (r0 + r + a.pos_off) * a.k - c0;
              lo = std::min(std::max<int64_t>(first, 0), W);
              hi = std::min(std::max<int64_t>(first + a.k, 0), W);
            }
            tile_row(S.data() + r * Wg, G.data() + r * Wg, W, lo, hi, a.scale, a.bias, a.weight, &acc);
          }
          if (!a.need_grad) continue;
          g_to_bf16(G.data(), Rg, Wg, A.data(), V.data());
          for (int64_t db = 0; db < dp / 64; ++db)
            ccr::lowp::brgemm(Rg, 64, Wg, Wg, 64, dp, true, A.data(), ynn.data() + (size_t)db * Np * 64 + c0 * 64,
                              dx + r0 * dp + db * 64);
          for (int64_t jb = 0; jb < Wg / 64; ++jb)
            ccr::lowp::brgemm(dp, 64, Rg, Mp, 64, Np, true, xT.data() + r0, V.data() + jb * Rg * 64,
                              dyT + c0 + jb * 64);
        }
      }
      tot[(size_t)tid * 3] = acc.loss;
      tot[(size_t)tid * 3 + 1] = acc.dscale;
      tot[(size_t)tid * 3 + 2] = acc.dbias;
    } catch (const std::exception& e) {
#pragma omp critical(ccr_sigmoid_lowp_err)
      {
        failed = true;
        err = e.what();
      }
    }
    ccr::lowp::release();
  }
  if (failed) throw std::runtime_error("sigmoid bf16 kernel: " + err);
  double l = 0.0, ds = 0.0, db = 0.0;
  for (int t = 0; t < nt; ++t) {
    l += tot[(size_t)t * 3];
    ds += tot[(size_t)t * 3 + 1];
    db += tot[(size_t)t * 3 + 2];
  }
  out3[0] = (float)(a.weight * l);
  out3[1] = (float)ds;
  out3[2] = (float)db;
  if (!a.need_grad) return;
  const float s = (float)a.scale;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < Mp * dp; ++i) dx[i] *= s;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < Np; ++n)  // dy = scale · Σ_t dyT_tᵀ
      for (int64_t k = 0; k < dp; ++k) {
        float v = 0.f;
        for (int t = 0; t < nt; ++t) v += dyT_parts[((size_t)t * dp + k) * Np + n];
        dy[n * dp + k] = s * v;
      }
  }
}

void blas_bf16_entry(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t Mp, int64_t Np, int64_t dp,
                     double scale, double bias, int64_t k, int64_t pos_off, bool positives, double weight,
                     bool need_grad, std::uintptr_t out3, std::uintptr_t dx, std::uintptr_t dy,
                     std::uintptr_t dyT_parts, int64_t tile_m, int64_t tile_n) {
  CCR_CHECK_ARG(M >= 1 && N >= 1 && Mp >= M && Np >= N && Mp % 64 == 0 && Np % 64 == 0 && dp % 64 == 0 && dp >= 64,
                "sigmoid bf16: operands must be padded to multiples of 64 (Mp >= M, Np >= N, dp)");
  CCR_CHECK_ARG(k >= 1, "sigmoid: k (texts per row item) must be >= 1");
  CCR_CHECK_ARG(!need_grad || (dx != 0 && dy != 0 && dyT_parts != 0), "sigmoid: need_grad needs dx, dy, dyT_parts");
  auto up = [](int64_t v, int64_t def) { return v > 0 ? (v + 63) / 64 * 64 : def; };
  Args a{M, N, dp, dp, dp, k, pos_off, up(tile_m, 256), up(tile_n, 512), positives, need_grad, scale, bias, weight};
  lowp_run(ccr::as_ptr<const bf16>(x), ccr::as_ptr<const bf16>(y), a, Mp, Np, dp, ccr::as_ptr<float>(out3),
           ccr::as_ptr<float>(dx), ccr::as_ptr<float>(dy), ccr::as_ptr<float>(dyT_parts));
}

void cpu_entry(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy,
               int dtype, double scale, double bias, int64_t k, int64_t pos_off, bool positives, double weight,
               bool need_grad, std::uintptr_t out3, std::uintptr_t dx, std::uintptr_t dy, std::uintptr_t dy_parts,
               int64_t tile_m, int64_t tile_n) {
  sigmoid_forward(false, x, y, M, N, d, ldx, ldy, dtype, scale, bias, k, pos_off, positives, weight, need_grad, out3,
                  dx, dy, dy_parts, tile_m, tile_n);
}
void blas_entry(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy,
                int dtype, double scale, double bias, int64_t k, int64_t pos_off, bool positives, double weight,
                bool need_grad, std::uintptr_t out3, std::uintptr_t dx, std::uintptr_t dy, std::uintptr_t dy_parts,
                int64_t tile_m, int64_t tile_n) {
  sigmoid_forward(true, x, y, M, N, d, ldx, ldy, dtype, scale, bias, k, pos_off, positives, weight, need_grad, out3,
                  dx, dy, dy_parts, tile_m, tile_n);
}

}  // namespace

void register_cpu_sigmoid(py::module_& m) {
  const char* doc =
      "Sigmoid (SigLIP) loss forward (ccr_fast/ops/sigmoid.py): out3 = [weight * sum softplus(-label Z), dscale, "
      "dbias]; with need_grad also dx [M, d], dy [N, d] (dy_parts: a [threads, N, d] workspace).";
  for (auto [name, fn] : {std::make_pair("sigmoid_forward_cpu", &cpu_entry),
                          std::make_pair("blas_sigmoid_forward", &blas_entry)})
    m.def(name, fn, doc, py::arg("x"), py::arg("y"), py::arg("M"), py::arg("N"), py::arg("d"), py::arg("ldx"),
          py::arg("ldy"), py::arg("dtype"), py::arg("scale"), py::arg("bias"), py::arg("k"), py::arg("pos_off"),
          py::arg("positives"), py::arg("weight"), py::arg("need_grad"), py::arg("out3"), py::arg("dx"),
          py::arg("dy"), py::arg("dy_parts"), py::arg("tile_m") = 0, py::arg("tile_n") = 0,
          py::call_guard<py::gil_scoped_release>());
  m.def("blas_sigmoid_forward_bf16", &blas_bf16_entry,
        "Sigmoid loss forward on bf16 operands zero-padded to multiples of 64 (x [Mp, dp], y [Np, dp]) through the "
        "registered bf16 GEMM; dx [Mp, dp], dy [Np, dp] fp32; dyT_parts: a [threads, dp, Np] fp32 workspace.",
        py::arg("x"), py::arg("y"), py::arg("M"), py::arg("N"), py::arg("Mp"), py::arg("Np"), py::arg("dp"),
        py::arg("scale"), py::arg("bias"), py::arg("k"), py::arg("pos_off"), py::arg("positives"), py::arg("weight"),
        py::arg("need_grad"), py::arg("out3"), py::arg("dx"), py::arg("dy"), py::arg("dyT_parts"),
        py::arg("tile_m") = 0, py::arg("tile_n") = 0, py::call_guard<py::gil_scoped_release>());
}

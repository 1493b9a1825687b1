// Register-blocked score tiles and rank-K updates shared by the CPU op families (see gemm_tile.h).
#include "gemm_tile.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#define CCR_GEMM_X86 1
#include <immintrin.h>
#endif

namespace ccr {
namespace {

using std::int64_t;

constexpr int64_t kMR = 6;  // rows of A per micro-tile
template <typename T>
constexpr int64_t kNR = 64 / static_cast<int64_t>(sizeof(T));  // columns per micro-tile: two 256-bit vectors

// Micro-kernel: c[r*ldc + j] = (accumulate ? c[r*ldc + j] : 0) + sum_k a[r][k] * b[k*ldb + j], r < kMR,
// j < kNR, the sum taken in order k = 0, 1, ..., K-1. a[r] points at row r of A (contiguous along k); the kNR
// values b[k*ldb + 0..kNR) must be readable for every k.
template <typename T>
using MicroKernel = void (*)(const T* const* a, const T* b, int64_t ldb, int64_t K, T* c, int64_t ldc,
                             bool accumulate);

// Portable kernel: a rounded multiply then a rounded add per k (floating-point contraction is off here, so a
// compiler for an FMA target cannot fuse some entries and not others).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
template <typename T>
void micro_generic(const T* const* a, const T* b, int64_t ldb, int64_t K, T* c, int64_t ldc, bool accumulate) {
  constexpr int64_t NR = kNR<T>;
  T acc[kMR][NR];
  for (int64_t r = 0; r < kMR; ++r)
    for (int64_t j = 0; j < NR; ++j) acc[r][j] = accumulate ? c[r * ldc + j] : T(0);
  for (int64_t k = 0; k < K; ++k, b += ldb) {
    for (int64_t r = 0; r < kMR; ++r) {
      const T ar = a[r][k];
      for (int64_t j = 0; j < NR; ++j) acc[r][j] += ar * b[j];
    }
  }
  for (int64_t r = 0; r < kMR; ++r)
    for (int64_t j = 0; j < NR; ++j) c[r * ldc + j] = acc[r][j];
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#ifdef CCR_GEMM_X86
#define CCR_AVX2 __attribute__((target("avx2,fma")))
#define CCR_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

// 256-bit vector operations of one element type, so that one kernel template serves float and double.
struct AvxF32 {
  using T = float;
  using V = __m256;
  static constexpr int64_t W = 8;
  static CCR_AVX2_INLINE V zero() { return _mm256_setzero_ps(); }
  static CCR_AVX2_INLINE V load(const T* p) { return _mm256_loadu_ps(p); }
  static CCR_AVX2_INLINE void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static CCR_AVX2_INLINE V bcast(const T* p) { return _mm256_broadcast_ss(p); }
  static CCR_AVX2_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
struct AvxF64 {
  using T = double;
  using V = __m256d;
  static constexpr int64_t W = 4;
  static CCR_AVX2_INLINE V zero() { return _mm256_setzero_pd(); }
  static CCR_AVX2_INLINE V load(const T* p) { return _mm256_loadu_pd(p); }
  static CCR_AVX2_INLINE void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static CCR_AVX2_INLINE V bcast(const T* p) { return _mm256_broadcast_sd(p); }
  static CCR_AVX2_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};

// AVX2+FMA kernel: 6 x 2 vector accumulators (12 registers) + 2 B vectors + 1 broadcast; per k 12 FMAs, each
// entry c[r][j] = fma(a[r][k], b[k][j], c[r][j]) in order of k.
template <class O>
CCR_AVX2 void micro_avx2(const typename O::T* const* a, const typename O::T* b, int64_t ldb, int64_t K,
                         typename O::T* c, int64_t ldc, bool accumulate) {
  using V = typename O::V;
  constexpr int64_t W = O::W;
  const typename O::T *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  V c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  if (accumulate) {
    c00 = O::load(c), c01 = O::load(c + W);
    c10 = O::load(c + ldc), c11 = O::load(c + ldc + W);
    c20 = O::load(c + 2 * ldc), c21 = O::load(c + 2 * ldc + W);
    c30 = O::load(c + 3 * ldc), c31 = O::load(c + 3 * ldc + W);
    c40 = O::load(c + 4 * ldc), c41 = O::load(c + 4 * ldc + W);
    c50 = O::load(c + 5 * ldc), c51 = O::load(c + 5 * ldc + W);
  } else {
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = O::zero();
  }
  for (int64_t k = 0; k < K; ++k, b += ldb) {
    const V b0 = O::load(b), b1 = O::load(b + W);
    V av = O::bcast(a0 + k);
    c00 = O::fma(av, b0, c00), c01 = O::fma(av, b1, c01);
    av = O::bcast(a1 + k);
    c10 = O::fma(av, b0, c10), c11 = O::fma(av, b1, c11);
    av = O::bcast(a2 + k);
    c20 = O::fma(av, b0, c20), c21 = O::fma(av, b1, c21);
    av = O::bcast(a3 + k);
    c30 = O::fma(av, b0, c30), c31 = O::fma(av, b1, c31);
    av = O::bcast(a4 + k);
    c40 = O::fma(av, b0, c40), c41 = O::fma(av, b1, c41);
    av = O::bcast(a5 + k);
    c50 = O::fma(av, b0, c50), c51 = O::fma(av, b1, c51);
  }
  O::store(c, c00), O::store(c + W, c01);
  O::store(c + ldc, c10), O::store(c + ldc + W, c11);
  O::store(c + 2 * ldc, c20), O::store(c + 2 * ldc + W, c21);
  O::store(c + 3 * ldc, c30), O::store(c + 3 * ldc + W, c31);
  O::store(c + 4 * ldc, c40), O::store(c + 4 * ldc + W, c41);
  O::store(c + 5 * ldc, c50), O::store(c + 5 * ldc + W, c51);
}
#endif  // CCR_GEMM_X86

bool detect_avx2() {
  const char* env = std::getenv("CCR_FAST_CPU_GENERIC");
  if (env != nullptr && env[0] != '\0' && std::strcmp(env, "0") != 0) return false;
#ifdef CCR_GEMM_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// Decided once per process, so that every score in the process comes from the same kernel.
bool use_avx2() {
  static const bool v = detect_avx2();
  return v;
}

MicroKernel<float> kernel_for(float*) {
#ifdef CCR_GEMM_X86
  if (use_avx2()) return micro_avx2<AvxF32>;
#endif
  return micro_generic<float>;
}
MicroKernel<double> kernel_for(double*) {
#ifdef CCR_GEMM_X86
  if (use_avx2()) return micro_avx2<AvxF64>;
#endif
  return micro_generic<double>;
}

// Grow-only per-thread scratch (one per element type and purpose).
template <typename T, int Slot>
T* scratch(int64_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

template <typename T>
void score_tile_impl(const T* x, int64_t ldx, int64_t mi, const T* y, int64_t ldy, int64_t nj, int64_t d, T* S,
                     int64_t lds) {
  constexpr int64_t NR = kNR<T>;
  const MicroKernel<T> kern = kernel_for(static_cast<T*>(nullptr));
  T* panel = scratch<T, 0>(NR * d);
  T tmp[kMR * NR];
  for (int64_t j0 = 0; j0 < nj; j0 += NR) {
    const int64_t nw = std::min(NR, nj - j0);
    // panel[k*NR + j] = y[j0 + j][k]; columns past nj are zero.
    for (int64_t j = 0; j < NR; ++j) {
      if (j < nw) {
        const T* yj = y + (j0 + j) * ldy;
        for (int64_t k = 0; k < d; ++k) panel[k * NR + j] = yj[k];
      } else {
        for (int64_t k = 0; k < d; ++k) panel[k * NR + j] = T(0);
      }
    }
    for (int64_t i0 = 0; i0 < mi; i0 += kMR) {
      const int64_t rows = std::min(kMR, mi - i0);
      const T* a[kMR];
      for (int64_t r = 0; r < kMR; ++r) a[r] = x + (i0 + std::min(r, rows - 1)) * ldx;  // edge: repeat last row
      if (rows == kMR && nw == NR) {
        kern(a, panel, NR, d, S + i0 * lds + j0, lds, false);
      } else {
        kern(a, panel, NR, d, tmp, NR, false);
        for (int64_t r = 0; r < rows; ++r) std::copy(tmp + r * NR, tmp + r * NR + nw, S + (i0 + r) * lds + j0);
      }
    }
  }
}

template <typename T>
void gemm_acc_impl(const T* A, int64_t lda, int64_t m, int64_t K, const T* B, int64_t ldb, int64_t n, T* C,
                   int64_t ldc) {
  if (m <= 0 || n <= 0 || K <= 0) return;
  constexpr int64_t NR = kNR<T>;
  const MicroKernel<T> kern = kernel_for(static_cast<T*>(nullptr));
  T tmp[kMR * NR];
  for (int64_t j0 = 0; j0 < n; j0 += NR) {
    const int64_t nw = std::min(NR, n - j0);
    const T* bp = B + j0;
    int64_t ldbp = ldb;
    if (nw < NR) {  // last, narrower panel: zero-padded copy so the kernel can load full vectors
      T* tail = scratch<T, 1>(K * NR);
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < NR; ++j) tail[k * NR + j] = j < nw ? B[k * ldb + j0 + j] : T(0);
      bp = tail;
      ldbp = NR;
    }
    for (int64_t i0 = 0; i0 < m; i0 += kMR) {
      const int64_t rows = std::min(kMR, m - i0);
      const T* a[kMR];
      for (int64_t r = 0; r < kMR; ++r) a[r] = A + (i0 + std::min(r, rows - 1)) * lda;
      T* c = C + i0 * ldc + j0;
      if (rows == kMR && nw == NR) {
        kern(a, bp, ldbp, K, c, ldc, true);
      } else {
        for (int64_t r = 0; r < kMR; ++r)
          for (int64_t j = 0; j < NR; ++j) tmp[r * NR + j] = (r < rows && j < nw) ? c[r * ldc + j] : T(0);
        kern(a, bp, ldbp, K, tmp, NR, true);
        for (int64_t r = 0; r < rows; ++r) std::copy(tmp + r * NR, tmp + r * NR + nw, c + r * ldc);
      }
    }
  }
}

}  // namespace

void score_tile(const float* x, int64_t ldx, int64_t mi, const float* y, int64_t ldy, int64_t nj, int64_t d, float* S,
                int64_t lds) {
  score_tile_impl<float>(x, ldx, mi, y, ldy, nj, d, S, lds);
}
void score_tile(const double* x, int64_t ldx, int64_t mi, const double* y, int64_t ldy, int64_t nj, int64_t d,
                double* S, int64_t lds) {
  score_tile_impl<double>(x, ldx, mi, y, ldy, nj, d, S, lds);
}

float score_one(const float* x, const float* y, int64_t d) {
  float s;
  score_tile_impl<float>(x, d, 1, y, d, 1, d, &s, 1);
  return s;
}
double score_one(const double* x, const double* y, int64_t d) {
  double s;
  score_tile_impl<double>(x, d, 1, y, d, 1, d, &s, 1);
  return s;
}

void gemm_acc(const float* A, int64_t lda, int64_t m, int64_t K, const float* B, int64_t ldb, int64_t n, float* C,
              int64_t ldc) {
  gemm_acc_impl<float>(A, lda, m, K, B, ldb, n, C, ldc);
}
void gemm_acc(const double* A, int64_t lda, int64_t m, int64_t K, const double* B, int64_t ldb, int64_t n, double* C,
              int64_t ldc) {
  gemm_acc_impl<double>(A, lda, m, K, B, ldb, n, C, ldc);
}

bool gemm_tile_uses_avx2() { return use_avx2(); }

}  // namespace ccr

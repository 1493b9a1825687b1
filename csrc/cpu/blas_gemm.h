// The vendor GEMM of the "blas" backend: cblas_sgemm / cblas_dgemm function pointers registered from Python
// (ccr_fast/backends/blas/_gemm.py), called single-threaded from the OpenMP threads of the tile loops.
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "common.h"

namespace ccr {
namespace blas {

using std::int64_t;

enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
typedef void (*sgemm_t)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                        int);
typedef void (*dgemm_t)(int, int, int, int, int, int, double, const double*, int, const double*, int, double,
                        double*, int);
inline sgemm_t g_sgemm = nullptr;
inline dgemm_t g_dgemm = nullptr;

inline void check_int(int64_t v, const char* what) {
  CCR_CHECK_ARG(v >= 0 && v <= std::numeric_limits<int>::max(),
                std::string("blas: ") + what + " exceeds the 32-bit BLAS interface, got " + std::to_string(v));
}

// Row-major C[M,N] = alpha op(A) op(B) + beta C; op(A) is [M,K], op(B) is [K,N].
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  g_sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
          (int)ldb, beta, C, (int)ldc);
}
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                 const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  g_dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
          (int)ldb, beta, C, (int)ldc);
}

// S[R, W] (ld W) = X[r0:r0+R] · Y[c0:c0+W]ᵀ
template <typename T>
inline void score_tile(const T* X, int64_t ldx, const T* Y, int64_t ldy, int64_t d, int64_t R, int64_t W, T* S,
                       int64_t lds) {
  gemm(false, true, R, W, d, T(1), X, ldx, Y, ldy, T(0), S, lds);
}

inline void check_gemm(int dtype) {
  CCR_CHECK_ARG(dtype == ccr::kFloat32 || dtype == ccr::kFloat64,
                std::string("blas CPU kernels take float32 or float64, got dtype ") + ccr::dtype_name(dtype));
  if (dtype == ccr::kFloat32 && g_sgemm == nullptr)
    throw std::runtime_error("blas: no sgemm registered (ccr_fast.backends.blas._gemm registers it on first use)");
  if (dtype == ccr::kFloat64 && g_dgemm == nullptr)
    throw std::runtime_error("blas: no dgemm registered (ccr_fast.backends.blas._gemm registers it on first use)");
}

}  // namespace blas
}  // namespace ccr

// The bf16 GEMM of the "blas" backend on CPU: oneDNN's BRGeMM ukernel (AMX / AVX512-BF16) as exported by torch's
// libtorch_cpu.so (at::native::cpublas::brgemm), registered from Python (ccr_fast/backends/blas/_lowp.py) as a
// function pointer, like the cblas sgemm of blas_gemm.h. bf16 x bf16 products, fp32 accumulation, fp32 C.
//
//   brgemm_bf16(M, N, K, lda, ldb, ldc, add_C, A, B, C):  C[M, N] (+)= A[M, K] · B[K, N]
//     A: bf16 row-major (lda); B: VNNI-2 packed, [K/2][N][2] with ldb = N (N <= 64, K even); C: fp32 (ldc).
//
// Operands are padded by the callers: rows to a multiple of 64, d to a multiple of 64 (zeros: they do not change
// any dot product), so every call has N = 64 and an even K.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace ccr {
namespace lowp {

using std::int64_t;
typedef std::uint16_t bf16;
typedef void (*brgemm_t)(long, long, long, long, long, long, bool, const bf16*, const bf16*, float*, bool);
typedef void (*release_t)(bool);
inline brgemm_t g_brgemm_bf16 = nullptr;
inline release_t g_release = nullptr;
constexpr int64_t kBlock = 64;  // the N of every brgemm call; the padding unit of rows and of d

inline void check() {
  if (g_brgemm_bf16 == nullptr)
    throw std::runtime_error("blas: no bf16 GEMM registered (ccr_fast.backends.blas._lowp registers it on first use)");
}

inline void brgemm(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc, bool add_C, const bf16* A,
                   const bf16* B, float* C) {
  g_brgemm_bf16((long)M, (long)N, (long)K, (long)lda, (long)ldb, (long)ldc, add_C, A, B, C, true);
}

inline void release() {
  if (g_release) g_release(true);
}

// fp32 -> bf16, round to nearest even (NaN stays NaN).
inline bf16 to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16)(u >> 16);
}

// Pack the rows [r0, r0 + 64) of a row-major bf16 matrix Y[rows, dp] as the B operand of Y·(rows)ᵀ products:
// out[k/2][n][k%2] = Y[r0 + n][k] (K = dp, N = 64).
inline void pack_nt(const bf16* Y, int64_t ldy, int64_t r0, int64_t dp, bf16* out) {
  for (int64_t k2 = 0; k2 < dp / 2; ++k2)
    for (int64_t n = 0; n < kBlock; ++n) {
      const bf16* src = Y + (r0 + n) * ldy + 2 * k2;
      out[(k2 * kBlock + n) * 2] = src[0];
      out[(k2 * kBlock + n) * 2 + 1] = src[1];
    }
}

// Pack the columns [c0, c0 + 64) of a row-major bf16 matrix X[rows, ldx] (rows even) as the B operand of G·X:
// out[k/2][n][k%2] = X[k][c0 + n] (K = rows, N = 64). A K-slice [k0, k0 + K') (k0 even) starts at out + k0 * 64.
inline void pack_nn(const bf16* X, int64_t ldx, int64_t rows, int64_t c0, bf16* out) {
  for (int64_t k2 = 0; k2 < rows / 2; ++k2)
    for (int64_t n = 0; n < kBlock; ++n) {
      out[(k2 * kBlock + n) * 2] = X[(2 * k2) * ldx + c0 + n];
      out[(k2 * kBlock + n) * 2 + 1] = X[(2 * k2 + 1) * ldx + c0 + n];
    }
}

}  // namespace lowp
}  // namespace ccr

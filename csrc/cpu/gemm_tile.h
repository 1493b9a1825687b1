// The one register-blocked matrix-product building block of every CPU op family (contrastive, similarity,
// triplet, topk, ranks). Implementation: gemm_tile.cpp.
//
// score_tile:  S[i*lds + j] = sum_k x[i*ldx + k] * y[j*ldy + k]      (i < mi, j < nj, k < d), i.e. S = X Y^T.
// gemm_acc:    C[i*ldc + j] += sum_k A[i*lda + k] * B[k*ldb + j]    (i < m, j < n, k < K): the rank-K update of
//              the backward passes (dx += dZ Y, dy += dZ^T X).
//
// Both run a 6 x NR micro-kernel (NR = 16 float / 8 double: two AVX vectors) whose 12 accumulators stay in
// registers: per k it broadcasts one element of each of the 6 A rows and loads one NR-wide row of B. score_tile
// first packs NR rows of Y transposed into a [d, NR] panel (zero-padded), so that B rows are contiguous. The
// AVX2+FMA kernel is picked once per process (cpuid) and the portable kernel is used otherwise (or when the
// environment variable CCR_FAST_CPU_GENERIC is set to a non-empty value other than "0").
//
// Reproducibility (ranks / topk / triplet compare scores with each other): every entry of a score_tile is one
// sequential accumulation over k = 0, 1, ..., d-1 starting from 0 -- one fused multiply-add per k on the AVX2
// path, a rounded multiply then a rounded add on the portable path (no contraction) -- whatever the entry's
// position in the tile and whatever mi, nj, ldx, ldy. The same pair of rows therefore gives a bit-identical
// score in every call (score_one included), and x.y == y.x bit for bit.
#pragma once

#include <cstdint>

namespace ccr {

void score_tile(const float* x, std::int64_t ldx, std::int64_t mi, const float* y, std::int64_t ldy, std::int64_t nj,
                std::int64_t d, float* S, std::int64_t lds);
void score_tile(const double* x, std::int64_t ldx, std::int64_t mi, const double* y, std::int64_t ldy,
                std::int64_t nj, std::int64_t d, double* S, std::int64_t lds);

// x . y over d elements with exactly the arithmetic of score_tile (a 1 x 1 tile).
float score_one(const float* x, const float* y, std::int64_t d);
double score_one(const double* x, const double* y, std::int64_t d);

void gemm_acc(const float* A, std::int64_t lda, std::int64_t m, std::int64_t K, const float* B, std::int64_t ldb,
              std::int64_t n, float* C, std::int64_t ldc);
void gemm_acc(const double* A, std::int64_t lda, std::int64_t m, std::int64_t K, const double* B, std::int64_t ldb,
              std::int64_t n, double* C, std::int64_t ldc);

// true when the AVX2+FMA micro-kernels are in use.
bool gemm_tile_uses_avx2();

}  // namespace ccr

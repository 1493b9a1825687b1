// ccr_fast CUDA backend: shared device building blocks and host helpers (contract: docs/interop.md,
// design notes: docs/cuda.md).
//
// Every kernel of this backend is built from ONE tile primitive, `tile_dot`: a CTA of 256 threads computes the
// 64x64 tile  acc[r][c] = sum_k A[r0+r, k] * B[c0+c, k]  in fp32 (inputs fp32/fp16/bf16 converted to fp32 when
// staged in shared memory). Thread t owns the 4x4 elements
//     rows  r0 + ty + 16*i,  cols  c0 + tx + 16*j,   i, j in 0..3,  tx = t % 16, ty = t / 16,
// so the 16 threads that share a row index are one half-warp (lanes 0-15 or 16-31): per-row reductions are
// four __shfl_xor steps (offsets 8, 4, 2, 1) that never leave the half-warp.
//
// Arithmetic contract ("same arithmetic" for ranks/argmax): each element is accumulated as a chain of
// __fmaf_rn(a_k, b_k, acc) for k = 0, 1, ..., d-1 in order, starting from +0 (zero padding beyond d adds
// +0 exactly). `dot_seq` below does the very same chain, so a score recomputed for one (row, col) pair is
// bit-identical to the score seen inside any tile. This is what lets target_ranks compare against the
// target's own score and lets the triplet backward recompute the forward's hinge decisions exactly.
// (A tensor-core tile would change the summation order; it must then also be used for the single scores.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common.h"

namespace ccr {
namespace cuda {

using std::int64_t;
using std::uint64_t;

constexpr int kTile = 64;      // rows and columns of a score tile
constexpr int kTileK = 16;     // depth of one shared-memory stage of tile_dot
constexpr int kThreads = 256;  // threads of every tile kernel
constexpr int kTargetCtas = 264;  // ~2 CTAs per SM on an H100 (132 SMs): the split heuristics aim at this

// ------------------------------------------------------------------------------------------ conversions
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

// ------------------------------------------------------------------------------------------ tile GEMM
struct TileSmem {
  float a[kTileK][kTile + 1];  // A stage, transposed: a[k][row]
  float b[kTileK][kTile + 1];  // B stage, transposed: b[k][col]
};

// acc[i][j] = sum_k A[r0 + ty + 16 i, k] * B[c0 + tx + 16 j, k]; rows >= rowsA / cols >= rowsB read as 0.
// Must be called by all 256 threads of the CTA (contains __syncthreads). 64-bit index arithmetic throughout.
template <typename T>
__device__ __forceinline__ void tile_dot(const T* __restrict__ A, int64_t lda, int64_t rowsA, int64_t r0,
                                         const T* __restrict__ B, int64_t ldb, int64_t rowsB, int64_t c0,
                                         int64_t d, TileSmem& sm, float acc[4][4]) {
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int64_t k0 = 0; k0 < d; k0 += kTileK) {
    // stage 64 rows x 16 k of A and of B: 1024 elements each, 4 per thread, coalesced along k
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int idx = tid + e * kThreads, row = idx >> 4, kk = idx & 15;
      const int64_t gk = k0 + kk, ga = r0 + row, gb = c0 + row;
      sm.a[kk][row] = (ga < rowsA && gk < d) ? to_f(A[ga * lda + gk]) : 0.f;
      sm.b[kk][row] = (gb < rowsB && gk < d) ? to_f(B[gb * ldb + gk]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = sm.a[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = sm.b[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __fmaf_rn(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
}

// The same fma chain as one element of tile_dot (see the arithmetic contract above).
template <typename T>
__device__ __forceinline__ float dot_seq(const T* __restrict__ a, const T* __restrict__ b, int64_t d) {
  float acc = 0.f;
  for (int64_t k = 0; k < d; ++k) acc = __fmaf_rn(to_f(a[k]), to_f(b[k]), acc);
  return acc;
}

// ------------------------------------------------------------------------------------------ reductions
__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ int half_warp_sum_int(int v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ uint64_t half_warp_max_u64(uint64_t v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) {
    const uint64_t w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Deterministic sum over the CTA (fixed tree); the result is valid in thread 0. `red` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.x == 0)
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += red[w];
  return s;
}

// ------------------------------------------------------------------------------------------ (score, index) keys
// A 64-bit key whose unsigned order is (score descending, index ascending): larger key = better candidate.
// High word: the float bits mapped to an order-preserving unsigned int (-0 folded onto +0); low word:
// 0xFFFFFFFF - index (indices must be < 2^32 - 1). Key 0 never encodes a real candidate: it is "empty".
__device__ __forceinline__ uint32_t ordered_bits(float s) {
  const uint32_t u = __float_as_uint(s + 0.0f);  // -0 + 0 = +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}
__device__ __forceinline__ uint64_t pack_key(float s, int64_t idx) {
  return (uint64_t(ordered_bits(s)) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(idx));
}
__device__ __forceinline__ float key_score(uint64_t key) { return from_ordered_bits(uint32_t(key >> 32)); }
__device__ __forceinline__ int64_t key_index(uint64_t key) { return int64_t(0xFFFFFFFFu - uint32_t(key)); }

// Hinge argument of the triplet loss; one expression used by forward and backward (identical rounding).
__device__ __forceinline__ float hinge_arg(float margin, float s, float s_pos) { return (margin + s) - s_pos; }

// Group id of the contrastive "positive pair" rule: (i + off) / div.
__device__ __forceinline__ int64_t group_of(int64_t i, int64_t off, int64_t div) { return (i + off) / div; }

// ------------------------------------------------------------------------------------------ single scores
// out[i] = dot_seq(P[prow], Q[qrow]) for i < n, with prow = p_idx ? p_idx[i] : i / p_div and
// qrow = q_idx ? q_idx[i] : i; a negative row index gives NaN ("no pair"). One thread per pair.
template <typename T>
static __global__ void pair_dot_kernel(const T* __restrict__ P, int64_t ldp, const int64_t* __restrict__ p_idx,
                                       int64_t p_div, const T* __restrict__ Q, int64_t ldq,
                                       const int64_t* __restrict__ q_idx, int64_t n, int64_t d,
                                       float* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pr = p_idx ? p_idx[i] : i / p_div;
    const int64_t qr = q_idx ? q_idx[i] : i;
    out[i] = (pr < 0 || qr < 0) ? __int_as_float(0x7fc00000) : dot_seq(P + pr * ldp, Q + qr * ldq, d);
  }
}

// ------------------------------------------------------------------------------------------ host helpers
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How a CTA grid covers (row blocks) x (column splits): each split is a contiguous run of `per_split` column
// tiles; every split is non-empty.
struct Plan {
  int64_t row_blocks = 0;  // ceil(rows / 64)
  int64_t col_blocks = 0;  // ceil(cols / 64)
  int64_t splits = 1;      // CTAs along the columns
  int64_t per_split = 0;   // column tiles per split
};

// num_splits > 0 forces (at most) that many splits (tests); otherwise enough splits to reach ~kTargetCtas CTAs,
// capped by max_splits.
inline Plan make_plan(int64_t rows, int64_t cols, int64_t num_splits, int64_t max_splits) {
  Plan p;
  p.row_blocks = cdiv(rows, kTile);
  p.col_blocks = cdiv(cols, kTile);
  int64_t want = num_splits > 0 ? num_splits : cdiv(kTargetCtas, p.row_blocks);
  if (num_splits <= 0 && want > max_splits) want = max_splits;
  if (want < 1) want = 1;
  if (want > p.col_blocks) want = p.col_blocks;
  if (want > 65535) want = 65535;  // gridDim.y limit
  p.per_split = cdiv(p.col_blocks, want);
  p.splits = cdiv(p.col_blocks, p.per_split);
  return p;
}

// Carves 256-byte aligned sub-buffers out of one workspace; with base 0 it only measures.
struct Carver {
  std::uintptr_t base;
  std::uintptr_t off = 0;
  explicit Carver(std::uintptr_t b) : base(b) {}
  template <typename T>
  T* take(int64_t n) {
    off = (off + 255) & ~std::uintptr_t(255);
    T* p = reinterpret_cast<T*>(base + off);
    off += std::uintptr_t(n > 0 ? n : 0) * sizeof(T);
    return p;
  }
  int64_t bytes() const { return int64_t((off + 255) & ~std::uintptr_t(255)); }
};

inline int grid_1d(int64_t n, int threads = kThreads) {
  const int64_t b = cdiv(n, threads);
  return int(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("ccr_fast CUDA error in ") + what + ": " + cudaGetErrorString(e));
}
inline void check_launch(const char* what) { check_cuda(cudaGetLastError(), what); }

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Selects the device (the extension links its own static CUDA runtime, so torch's current device is not seen)
// and clears a stale error from an earlier call.
inline void enter_device(int device) {
  CCR_CHECK_ARG(device >= 0, "device must be a CUDA device index >= 0, got " + std::to_string(device));
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  (void)cudaGetLastError();
}

inline void check_grid_y(int64_t y, const char* what) {
  CCR_CHECK_ARG(y <= 65535, std::string(what) + ": too many CTAs along grid y (" + std::to_string(y) + " > 65535)");
}

inline void check_sizes(const char* fn, int64_t rows_a, int64_t rows_b, int64_t d, int64_t lda, int64_t ldb) {
  const std::string f(fn);
  CCR_CHECK_ARG(rows_a >= 1 && rows_b >= 1 && d >= 1,
                f + ": sizes must be >= 1, got " + std::to_string(rows_a) + ", " + std::to_string(rows_b) +
                    ", d=" + std::to_string(d));
  CCR_CHECK_ARG(lda >= d && ldb >= d, f + ": row strides must be >= d=" + std::to_string(d) + ", got " +
                                          std::to_string(lda) + ", " + std::to_string(ldb));
}

}  // namespace cuda
}  // namespace ccr

// Runs BODY with `scalar_t` bound to the CUDA element type of a dtype code (fp32 / fp16 / bf16).
#define CCR_CUDA_DISPATCH(code, fn, ...)                                                                   \
  do {                                                                                                      \
    switch (code) {                                                                                         \
      case ::ccr::kFloat32: { using scalar_t = float; __VA_ARGS__; break; }                                 \
      case ::ccr::kFloat16: { using scalar_t = __half; __VA_ARGS__; break; }                                \
      case ::ccr::kBFloat16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; }                        \
      default:                                                                                              \
        throw std::invalid_argument(std::string(fn) + ": dtype must be float32, float16 or bfloat16 (codes " \
                                    "0, 2, 3) on CUDA, got " + ::ccr::dtype_name(code));                    \
    }                                                                                                       \
  } while (0)

// Row-owned gradient kernel shared by the contrastive backward and the VSE++ sum-mode backward.
//
//   out[r, :] = sum_c W[r, c] * B[c, :]       for the rows r of A owned by this CTA,
//
// where W[r, c] is formed on the fly, in fp32 registers, from the recomputed score tile S = A B^T (never stored
// beyond one 64x64 tile in shared memory). Grid: x = row block (64 rows of A), y = column split (a contiguous run
// of `per_split` 64-column tiles of B). CTA (x, y) owns out rows [64x, 64x+64) of partial slice y exclusively:
//   part[y][r][k]  (row stride d; when there is one split, part is the final output itself),
// so there are no atomics and the result is deterministic. The column-owned gradient is the same kernel with the
// roles of A and B swapped: both W formulas below are symmetric under (A, row data) <-> (B, column data).
#pragma once

#include "common.cuh"

namespace ccr {
namespace cuda {

enum GradMode : int { kGradContrastive = 0, kGradTripletSum = 1 };

struct GradParams {
  const float* scale;   // device scalar; nullptr = 1 (triplet)
  // contrastive: W = scale * (ca[r] exp(z - la[r]) + cb[c] exp(z - lb[c]) - w_pos [pos]),  z = scale * s
  const float* la;
  const float* lb;
  const float* ca;
  const float* cb;
  float w_pos;
  int64_t off_a, div_a, off_b, div_b;
  // triplet sum mode: W = grad ([margin + s - diag[r] > 0] + [margin + s - diag[c] > 0]) for c != r
  const float* diag;
  float margin;
  float grad;
  // optional outputs (nullptr = not needed)
  float* dscale_part;  // [splits * row_blocks]: sum over the CTA's tiles of dZ * s (contrastive)
  int* count_part;     // [splits][rows_a]: per-row count of active row hinges (triplet)
};

// __launch_bounds__(kThreads, 2): with kThreads alone ptxas (CUDA 13) capped this kernel at 64 registers and
// spilled in its inner loop (gpu-check --compile-only); 2 CTAs/SM allow 128.
template <typename T, int MODE>
__global__ void __launch_bounds__(kThreads, 2) grad_rows_kernel(const T* __restrict__ A, int64_t lda, int64_t rows_a,
                                                             const T* __restrict__ B, int64_t ldb, int64_t rows_b,
                                                             int64_t d, int64_t per_split, GradParams p,
                                                             float* __restrict__ part) {
  __shared__ TileSmem ts;
  __shared__ float w_s[kTile][kTile + 1];   // W tile: w_s[row][col]
  __shared__ float b_s[kTile][kTile + 1];   // B chunk: b_s[col][k]
  __shared__ float red[32];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t r0 = int64_t(blockIdx.x) * kTile;
  const int64_t split = blockIdx.y;
  const int64_t col_blocks = (rows_b + kTile - 1) / kTile;
  const int64_t cb_begin = split * per_split;
  const int64_t cb_end = min(col_blocks, cb_begin + per_split);
  float* out = part + split * rows_a * d;
  const float scale = (p.scale != nullptr) ? *p.scale : 1.f;

  float dsc = 0.f;  // this thread's share of sum dZ * s
  int cnt[4] = {0, 0, 0, 0};
  bool first = true;
  for (int64_t cbk = cb_begin; cbk < cb_end; ++cbk) {
    const int64_t c0 = cbk * kTile;
    float acc[4][4];
    tile_dot(A, lda, rows_a, r0, B, ldb, rows_b, c0, d, ts, acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + ty + 16 * i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t c = c0 + tx + 16 * j;
        float w = 0.f;
        if (r < rows_a && c < rows_b) {
          const float s = acc[i][j];
          if (MODE == kGradContrastive) {
            const float z = scale * s;
            float dz = 0.f;
            const float car = p.ca[r], cbc = p.cb[c];
            if (car != 0.f) dz += car * expf(z - p.la[r]);  // guard: lse may be unspecified when its coef is 0
            if (cbc != 0.f) dz += cbc * expf(z - p.lb[c]);
            if (group_of(r, p.off_a, p.div_a) == group_of(c, p.off_b, p.div_b)) dz -= p.w_pos;
            if (dz != 0.f) dsc += dz * s;  // a zero gradient at a -inf score adds 0, not NaN
            w = dz * scale;
          } else {  // kGradTripletSum
            if (c != r) {
              const bool row_on = hinge_arg(p.margin, s, p.diag[r]) > 0.f;
              const bool col_on = hinge_arg(p.margin, s, p.diag[c]) > 0.f;
              cnt[i] += row_on ? 1 : 0;
              w = p.grad * (float(row_on) + float(col_on));
            }
          }
        }
        w_s[ty + 16 * i][tx + 16 * j] = w;
      }
    }
    __syncthreads();
    // out[r0:r0+64, dc:dc+64] (+)= w_s (64x64) @ B[c0:c0+64, dc:dc+64]
    for (int64_t dc = 0; dc < d; dc += kTile) {
#pragma unroll 4
      for (int e = 0; e < (kTile * kTile) / kThreads; ++e) {
        const int idx = tid + e * kThreads, cc = idx >> 6, kk = idx & 63;
        const int64_t gc = c0 + cc, gk = dc + kk;
        b_s[cc][kk] = (gc < rows_b && gk < d) ? to_f(B[gc * ldb + gk]) : 0.f;
      }
      __syncthreads();
      float o[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) o[i][j] = 0.f;
#pragma unroll 8
      for (int cc = 0; cc < kTile; ++cc) {
        float wv[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) wv[i] = w_s[ty + 16 * i][cc];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = b_s[cc][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) o[i][j] = __fmaf_rn(wv[i], bv[j], o[i][j]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t r = r0 + ty + 16 * i;
        if (r >= rows_a) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t k = dc + tx + 16 * j;
          if (k >= d) continue;
          float* dst = out + r * d + k;
          *dst = first ? o[i][j] : *dst + o[i][j];
        }
      }
      __syncthreads();  // b_s (and, after the last chunk, w_s) are rewritten next
    }
    first = false;
  }
  if (p.dscale_part != nullptr) {
    const float s = block_sum(dsc, red);
    if (tid == 0) p.dscale_part[split * gridDim.x + blockIdx.x] = s;
  }
  if (p.count_part != nullptr) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = half_warp_sum_int(cnt[i]);
      const int64_t r = r0 + ty + 16 * i;
      if (tx == 0 && r < rows_a) p.count_part[split * rows_a + r] = c;
    }
  }
}

// out[i] = sum_s part[s][i] for i < n, in split order (deterministic).
static __global__ void sum_splits_kernel(const float* __restrict__ part, int64_t splits, int64_t n,
                                         float* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t k = 0; k < splits; ++k) s += part[k * n + i];
    out[i] = s;
  }
}

// out[0] = sum_i v[i] with one CTA of kThreads threads (fixed reduction tree: deterministic).
static __global__ void sum_all_kernel(const float* __restrict__ v, int64_t n, float* __restrict__ out) {
  __shared__ float red[32];
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[0] = s;
}

}  // namespace cuda
}  // namespace ccr

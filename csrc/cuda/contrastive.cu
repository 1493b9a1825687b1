// CUDA kernels of the contrastive op family (CLIP, 1-to-K, open_clip local loss). Contract: docs/interop.md.
//
// Forward, per direction (rows = x for lse_row, rows = y for lse_col; the column LSE is the row LSE of the
// swapped problem, one extra GEMM pass instead of an O(blocks x N) partial buffer):
//   lse_rows_kernel  grid (row blocks, column splits). CTA (x, y) owns rows [64x, 64x+64) over its split's
//                    column tiles and keeps an online (max, sum-exp, positive-sum) per row in registers
//                    (replicated over the half-warp that owns the row). Writes part[y][r] = (m, l, pos).
//   lse_merge_kernel one thread per row merges the splits: lse = M + log(sum_s l_s exp(m_s - M)).
// Backward: grad_rows_kernel (grad_rows.cuh) twice: dx row-owned, dy column-owned (swapped roles), dZ formed in
// fp32 registers from the recomputed tile, dscale = sum dZ * (x y^T) from the dx pass.
#include "grad_rows.cuh"

namespace ccr {
namespace cuda {
namespace {

// __launch_bounds__(kThreads, 2): with kThreads alone ptxas (CUDA 13) held the fp32 instance to 80 registers and
// spilled 56 bytes (gpu-check --compile-only).
template <typename T>
__global__ void __launch_bounds__(kThreads, 2) lse_rows_kernel(const T* __restrict__ A, int64_t lda, int64_t rows_a,
                                                            const T* __restrict__ B, int64_t ldb, int64_t rows_b,
                                                            int64_t d, const float* __restrict__ scale_p,
                                                            int64_t off_a, int64_t div_a, int64_t off_b,
                                                            int64_t div_b, int64_t per_split,
                                                            float* __restrict__ part) {
  __shared__ TileSmem ts;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t r0 = int64_t(blockIdx.x) * kTile;
  const int64_t split = blockIdx.y;
  const int64_t col_blocks = (rows_b + kTile - 1) / kTile;
  const int64_t cb_begin = split * per_split, cb_end = min(col_blocks, cb_begin + per_split);
  const float scale = *scale_p;
  float m[4], l[4], ps[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) { m[i] = -INFINITY; l[i] = 0.f; ps[i] = 0.f; }

  for (int64_t cbk = cb_begin; cbk < cb_end; ++cbk) {
    const int64_t c0 = cbk * kTile;
    float acc[4][4];
    tile_dot(A, lda, rows_a, r0, B, ldb, rows_b, c0, d, ts, acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + ty + 16 * i;
      const int64_t gr = group_of(r, off_a, div_a);
      float z[4], tmax = -INFINITY, pos = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t c = c0 + tx + 16 * j;
        z[j] = (c < rows_b) ? scale * acc[i][j] : -INFINITY;
        tmax = fmaxf(tmax, z[j]);
        if (c < rows_b && group_of(c, off_b, div_b) == gr) pos += z[j];
      }
      tmax = half_warp_max(tmax);  // -inf when the tile's logits are all -inf (or overflowed)
      const float mnew = fmaxf(m[i], tmax);
      // l is kept relative to the shift sh: mnew, or 0 when mnew is +-inf (exp(-inf - -inf) would be NaN)
      const float sh = isinf(mnew) ? 0.f : mnew;
      float se = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) se += expf(z[j] - sh);  // invalid columns: exp(-inf) = 0
      se = half_warp_sum(se);
      l[i] = l[i] * expf(m[i] - sh) + se;  // first tile: 0 * exp(-inf) = 0
      m[i] = mnew;
      ps[i] += half_warp_sum(pos);
    }
  }
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + ty + 16 * i;
      if (r < rows_a) {
        float* o = part + (split * rows_a + r) * 3;
        o[0] = m[i];
        o[1] = l[i];
        o[2] = ps[i];
      }
    }
  }
}

__global__ void lse_merge_kernel(const float* __restrict__ part, int64_t splits, int64_t rows,
                                 float* __restrict__ lse, float* __restrict__ pos) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  float mx = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, part[(s * rows + r) * 3]);
  // each partial sum is relative to its shift (its max, or 0 when that max is +-inf); so is the merged one
  const float mx_sh = isinf(mx) ? 0.f : mx;
  float sum = 0.f, ps = 0.f;
  for (int64_t s = 0; s < splits; ++s) {
    const float* q = part + (s * rows + r) * 3;
    if (q[0] != -INFINITY) sum += q[1] * expf((isinf(q[0]) ? 0.f : q[0]) - mx_sh);
    ps += q[2];
  }
  lse[r] = mx_sh + logf(sum);  // all -inf: 0 + log(0) = -inf
  pos[r] = ps;
}

// pos[r] = sum over the positive columns c of row r of scale * A_r . B_c  (one warp per row; used for pos_col
// when the column LSE pass is skipped). The positives of r are the contiguous range
// c in [g div_b - off_b, (g + 1) div_b - off_b) with g = (r + off_a) / div_a.
template <typename T>
__global__ void pos_sum_kernel(const T* __restrict__ A, int64_t lda, int64_t rows_a, const T* __restrict__ B,
                               int64_t ldb, int64_t rows_b, int64_t d, const float* __restrict__ scale_p,
                               int64_t off_a, int64_t div_a, int64_t off_b, int64_t div_b,
                               float* __restrict__ pos) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < rows_a; r += warps) {
  const int64_t g = group_of(r, off_a, div_a);
  const int64_t lo = max(int64_t(0), g * div_b - off_b), hi = min(rows_b, (g + 1) * div_b - off_b);
  float acc = 0.f;
  for (int64_t c = lo; c < hi; ++c)
    for (int64_t k = lane; k < d; k += 32) acc += to_f(A[r * lda + k]) * to_f(B[c * ldb + k]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) pos[r] = *scale_p * acc;
  }
}

struct FwdLayout {
  Plan row, col;
  float* part_row;
  float* part_col;
  int64_t bytes;
};

FwdLayout forward_layout(std::uintptr_t ws, int64_t M, int64_t N, bool compute_col, int64_t num_splits) {
  FwdLayout L;
  L.row = make_plan(M, N, num_splits, 1 << 16);
  L.col = make_plan(N, M, num_splits, 1 << 16);
  Carver c(ws);
  L.part_row = c.take<float>(L.row.splits * M * 3);
  L.part_col = c.take<float>(compute_col ? L.col.splits * N * 3 : 0);
  L.bytes = c.bytes();
  return L;
}

// Backward: the partial dx/dy buffers are only used with more than one split; splitting is capped so that
// they stay below ~256 MiB each.
constexpr int64_t kMaxPartialBytes = int64_t(256) << 20;

struct BwdLayout {
  Plan row, col;
  float* part_dx;
  float* part_dy;
  float* dscale_part;
  int64_t bytes;
};

BwdLayout backward_layout(std::uintptr_t ws, int64_t M, int64_t N, int64_t d, int64_t num_splits) {
  BwdLayout L;
  const int64_t cap_r = std::max<int64_t>(1, kMaxPartialBytes / (M * d * 4));
  const int64_t cap_c = std::max<int64_t>(1, kMaxPartialBytes / (N * d * 4));
  L.row = make_plan(M, N, num_splits, cap_r);
  L.col = make_plan(N, M, num_splits, cap_c);
  Carver c(ws);
  L.part_dx = c.take<float>(L.row.splits > 1 ? L.row.splits * M * d : 0);
  L.part_dy = c.take<float>(L.col.splits > 1 ? L.col.splits * N * d : 0);
  L.dscale_part = c.take<float>(L.row.splits * L.row.row_blocks);
  L.bytes = c.bytes();
  return L;
}

void check_groups(const char* fn, int64_t row_off, int64_t row_div, int64_t col_off, int64_t col_div) {
  CCR_CHECK_ARG(row_off >= 0 && col_off >= 0 && row_div >= 1 && col_div >= 1,
                std::string(fn) + ": need row_off, col_off >= 0 and row_div, col_div >= 1, got (" +
                    std::to_string(row_off) + ", " + std::to_string(row_div) + ", " + std::to_string(col_off) +
                    ", " + std::to_string(col_div) + ")");
}

}  // namespace

int64_t contrastive_forward_workspace_bytes(int64_t M, int64_t N, bool compute_col, int64_t num_splits) {
  return forward_layout(0, M, N, compute_col, num_splits).bytes;
}

int64_t contrastive_backward_workspace_bytes(int64_t M, int64_t N, int64_t d, int64_t num_splits) {
  return backward_layout(0, M, N, d, num_splits).bytes;
}

void contrastive_forward_cuda(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx,
                              int64_t ldy, int dtype, std::uintptr_t scale, int64_t row_off, int64_t row_div,
                              int64_t col_off, int64_t col_div, bool compute_col, std::uintptr_t lse_row,
                              std::uintptr_t lse_col, std::uintptr_t pos_row, std::uintptr_t pos_col,
                              std::uintptr_t workspace, int64_t num_splits, int device, std::uintptr_t stream) {
  const char* fn = "contrastive_forward_cuda";
  check_sizes(fn, M, N, d, ldx, ldy);
  check_groups(fn, row_off, row_div, col_off, col_div);
  enter_device(device);
  cudaStream_t st = as_stream(stream);
  FwdLayout L = forward_layout(workspace, M, N, compute_col, num_splits);
  check_grid_y(L.row.splits, fn);
  check_grid_y(L.col.splits, fn);
  const float* sc = as_ptr<const float>(scale);
  CCR_CUDA_DISPATCH(dtype, fn, {
    const scalar_t* xp = as_ptr<const scalar_t>(x);
    const scalar_t* yp = as_ptr<const scalar_t>(y);
    lse_rows_kernel<scalar_t><<<dim3(unsigned(L.row.row_blocks), unsigned(L.row.splits)), kThreads, 0, st>>>(
        xp, ldx, M, yp, ldy, N, d, sc, row_off, row_div, col_off, col_div, L.row.per_split, L.part_row);
    check_launch("lse_rows_kernel (rows)");
    lse_merge_kernel<<<grid_1d(M), kThreads, 0, st>>>(L.part_row, L.row.splits, M, as_ptr<float>(lse_row),
                                                       as_ptr<float>(pos_row));
    check_launch("lse_merge_kernel (rows)");
    if (compute_col) {
      lse_rows_kernel<scalar_t><<<dim3(unsigned(L.col.row_blocks), unsigned(L.col.splits)), kThreads, 0, st>>>(
          yp, ldy, N, xp, ldx, M, d, sc, col_off, col_div, row_off, row_div, L.col.per_split, L.part_col);
      check_launch("lse_rows_kernel (columns)");
      lse_merge_kernel<<<grid_1d(N), kThreads, 0, st>>>(L.part_col, L.col.splits, N, as_ptr<float>(lse_col),
                                                         as_ptr<float>(pos_col));
      check_launch("lse_merge_kernel (columns)");
    } else {
      pos_sum_kernel<scalar_t><<<grid_1d(N * 32), kThreads, 0, st>>>(yp, ldy, N, xp, ldx, M, d, sc, col_off,
                                                                     col_div, row_off, row_div,
                                                                     as_ptr<float>(pos_col));
      check_launch("pos_sum_kernel");
    }
  });
}

void contrastive_backward_cuda(std::uintptr_t x, std::uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx,
                               int64_t ldy, int dtype, std::uintptr_t scale, std::uintptr_t lse_row,
                               std::uintptr_t lse_col, std::uintptr_t row_coef, std::uintptr_t col_coef,
                               double w_pos, int64_t row_off, int64_t row_div, int64_t col_off, int64_t col_div,
                               std::uintptr_t dx, std::uintptr_t dy, std::uintptr_t dscale,
                               std::uintptr_t workspace, int64_t num_splits, int device, std::uintptr_t stream) {
  const char* fn = "contrastive_backward_cuda";
  check_sizes(fn, M, N, d, ldx, ldy);
  check_groups(fn, row_off, row_div, col_off, col_div);
  enter_device(device);
  cudaStream_t st = as_stream(stream);
  BwdLayout L = backward_layout(workspace, M, N, d, num_splits);
  check_grid_y(L.row.splits, fn);
  check_grid_y(L.col.splits, fn);

  GradParams pr{};
  pr.scale = as_ptr<const float>(scale);
  pr.la = as_ptr<const float>(lse_row);
  pr.lb = as_ptr<const float>(lse_col);
  pr.ca = as_ptr<const float>(row_coef);
  pr.cb = as_ptr<const float>(col_coef);
  pr.w_pos = float(w_pos);
  pr.off_a = row_off; pr.div_a = row_div; pr.off_b = col_off; pr.div_b = col_div;
  pr.dscale_part = L.dscale_part;
  GradParams pc = pr;  // the column-owned pass: roles swapped
  pc.la = pr.lb; pc.lb = pr.la; pc.ca = pr.cb; pc.cb = pr.ca;
  pc.off_a = col_off; pc.div_a = col_div; pc.off_b = row_off; pc.div_b = row_div;
  pc.dscale_part = nullptr;

  float* dxp = as_ptr<float>(dx);
  float* dyp = as_ptr<float>(dy);
  CCR_CUDA_DISPATCH(dtype, fn, {
    const scalar_t* xp = as_ptr<const scalar_t>(x);
    const scalar_t* yp = as_ptr<const scalar_t>(y);
    grad_rows_kernel<scalar_t, kGradContrastive>
        <<<dim3(unsigned(L.row.row_blocks), unsigned(L.row.splits)), kThreads, 0, st>>>(
            xp, ldx, M, yp, ldy, N, d, L.row.per_split, pr, L.row.splits > 1 ? L.part_dx : dxp);
    check_launch("grad_rows_kernel (dx)");
    grad_rows_kernel<scalar_t, kGradContrastive>
        <<<dim3(unsigned(L.col.row_blocks), unsigned(L.col.splits)), kThreads, 0, st>>>(
            yp, ldy, N, xp, ldx, M, d, L.col.per_split, pc, L.col.splits > 1 ? L.part_dy : dyp);
    check_launch("grad_rows_kernel (dy)");
  });
  if (L.row.splits > 1) {
    sum_splits_kernel<<<grid_1d(M * d), kThreads, 0, st>>>(L.part_dx, L.row.splits, M * d, dxp);
    check_launch("sum_splits_kernel (dx)");
  }
  if (L.col.splits > 1) {
    sum_splits_kernel<<<grid_1d(N * d), kThreads, 0, st>>>(L.part_dy, L.col.splits, N * d, dyp);
    check_launch("sum_splits_kernel (dy)");
  }
  sum_all_kernel<<<1, kThreads, 0, st>>>(L.dscale_part, L.row.splits * L.row.row_blocks, as_ptr<float>(dscale));
  check_launch("sum_all_kernel (dscale)");
}

}  // namespace cuda
}  // namespace ccr

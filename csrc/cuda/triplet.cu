// CUDA kernels of the VSE++ triplet op family. Contract: docs/interop.md ("triplet"), S[i, j] = b_i . a_j.
//
// Forward, per direction (row pass: rows = b, cols = a; column pass: rows = a, cols = b, which sees S^T):
//   triplet_rows_kernel  grid (row blocks, column splits); per row, over the split's column tiles, either the
//                        hardest negative as a packed (score, index) key (max of keys = max score, ties -> lower
//                        index; the diagonal is skipped by index) or the sum of hinges max(0, m + S_ij - S_ii).
//   triplet_finish_kernel merges the splits (max of keys / sum in split order) and forms the cost.
// The diagonal S_ii comes from pair_dot_kernel with the same fma chain as the tiles (common.cuh), so the
// backward recomputes exactly the forward's hinge decisions.
// Backward, max-violation: O(B d) work: active flags from the saved indices, an owner-computes kernel for the
// terms of row k / column k, and atomicAdd scatter of the hardest negatives' terms (summation order of that
// scatter is not deterministic). Sum mode: grad_rows_kernel (dense active-set matrix on the fly, both passes)
// plus a diagonal fix-up with the active counts.
#include "grad_rows.cuh"

namespace ccr {
namespace cuda {
namespace {

// __launch_bounds__(kThreads, 2): with kThreads alone ptxas (CUDA 13) capped this kernel at 64 registers and
// spilled in its inner loop (gpu-check --compile-only); 2 CTAs/SM allow 128.
template <typename T, bool MAXV>
__global__ void __launch_bounds__(kThreads, 2) triplet_rows_kernel(const T* __restrict__ A, int64_t lda,
                                                                const T* __restrict__ B, int64_t ldb, int64_t n,
                                                                int64_t d, const float* __restrict__ diag,
                                                                float margin, int64_t per_split,
                                                                uint64_t* __restrict__ part_key,
                                                                float* __restrict__ part_sum) {
  __shared__ TileSmem ts;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t r0 = int64_t(blockIdx.x) * kTile;
  const int64_t split = blockIdx.y;
  const int64_t col_blocks = (n + kTile - 1) / kTile;
  const int64_t cb_begin = split * per_split, cb_end = min(col_blocks, cb_begin + per_split);
  uint64_t best[4] = {0, 0, 0, 0};
  float sum[4] = {0.f, 0.f, 0.f, 0.f};
  float dg[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = r0 + ty + 16 * i;
    dg[i] = (!MAXV && r < n) ? diag[r] : 0.f;
  }
  for (int64_t cbk = cb_begin; cbk < cb_end; ++cbk) {
    const int64_t c0 = cbk * kTile;
    float acc[4][4];
    tile_dot(A, lda, n, r0, B, ldb, n, c0, d, ts, acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + ty + 16 * i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t c = c0 + tx + 16 * j;
        if (c >= n || c == r) continue;
        if (MAXV) {
          const uint64_t key = pack_key(acc[i][j], c);
          best[i] = key > best[i] ? key : best[i];
        } else {
          sum[i] += fmaxf(0.f, hinge_arg(margin, acc[i][j], dg[i]));
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = r0 + ty + 16 * i;
    if (MAXV) {
      const uint64_t k = half_warp_max_u64(best[i]);
      if (tx == 0 && r < n) part_key[split * n + r] = k;
    } else {
      const float s = half_warp_sum(sum[i]);
      if (tx == 0 && r < n) part_sum[split * n + r] = s;
    }
  }
}

__global__ void triplet_finish_kernel(const uint64_t* __restrict__ part_key, const float* __restrict__ part_sum,
                                      int64_t splits, int64_t n, const float* __restrict__ diag, float margin,
                                      bool max_violation, float* __restrict__ cost, int64_t* __restrict__ idx) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < n; r += int64_t(gridDim.x) * blockDim.x) {
    if (max_violation) {
      uint64_t k = 0;
      for (int64_t s = 0; s < splits; ++s) k = part_key[s * n + r] > k ? part_key[s * n + r] : k;
      if (k == 0) {  // no negative (n == 1)
        cost[r] = 0.f;
        idx[r] = -1;
      } else {
        cost[r] = fmaxf(0.f, hinge_arg(margin, key_score(k), diag[r]));
        idx[r] = key_index(k);
      }
    } else {
      float c = 0.f;
      for (int64_t s = 0; s < splits; ++s) c += part_sum[s * n + r];
      cost[r] = c;
      idx[r] = -1;
    }
  }
}

// coef_row[k] = grad if row k's hinge (hardest negative row_idx[k]) is active, else 0; coef_col likewise.
template <typename T>
__global__ void triplet_active_kernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ b, int64_t ldb,
                                      int64_t n, int64_t d, const int64_t* __restrict__ row_idx,
                                      const int64_t* __restrict__ col_idx, float margin, float grad,
                                      float* __restrict__ coef_row, float* __restrict__ coef_col) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const float dg = dot_seq(b + k * ldb, a + k * lda, d);  // S[k, k], as in the forward
    const int64_t j = row_idx[k], i = col_idx[k];
    bool row_on = false, col_on = false;
    if (j >= 0 && j < n && j != k) row_on = hinge_arg(margin, dot_seq(b + k * ldb, a + j * lda, d), dg) > 0.f;
    if (i >= 0 && i < n && i != k) col_on = hinge_arg(margin, dot_seq(a + k * lda, b + i * ldb, d), dg) > 0.f;
    coef_row[k] = row_on ? grad : 0.f;
    coef_col[k] = col_on ? grad : 0.f;
  }
}

// Owner-computes part: da_k = cc_k (b_{col_idx k} - b_k) - cr_k b_k,  db_k = cr_k (a_{row_idx k} - a_k) - cc_k a_k.
template <typename T>
__global__ void triplet_owned_kernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ b, int64_t ldb,
                                     int64_t n, int64_t d, const int64_t* __restrict__ row_idx,
                                     const int64_t* __restrict__ col_idx, const float* __restrict__ coef_row,
                                     const float* __restrict__ coef_col, float* __restrict__ da,
                                     float* __restrict__ db) {
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) {
    const float cr = coef_row[k], cc = coef_col[k];
    const int64_t j = row_idx[k], i = col_idx[k];
    for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
      const float ak = to_f(a[k * lda + t]), bk = to_f(b[k * ldb + t]);
      float va = -cr * bk, vb = -cc * ak;
      if (cc != 0.f) va += cc * (to_f(b[i * ldb + t]) - bk);
      if (cr != 0.f) vb += cr * (to_f(a[j * lda + t]) - ak);
      da[k * d + t] = va;
      db[k * d + t] = vb;
    }
  }
}

// Scatter part: da_{row_idx k} += cr_k b_k,  db_{col_idx k} += cc_k a_k  (atomics).
template <typename T>
__global__ void triplet_scatter_kernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ b,
                                       int64_t ldb, int64_t n, int64_t d, const int64_t* __restrict__ row_idx,
                                       const int64_t* __restrict__ col_idx, const float* __restrict__ coef_row,
                                       const float* __restrict__ coef_col, float* __restrict__ da,
                                       float* __restrict__ db) {
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) {
    const float cr = coef_row[k], cc = coef_col[k];
    const int64_t j = row_idx[k], i = col_idx[k];
    for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
      if (cr != 0.f) atomicAdd(da + j * d + t, cr * to_f(b[k * ldb + t]));
      if (cc != 0.f) atomicAdd(db + i * d + t, cc * to_f(a[k * lda + t]));
    }
  }
}

// Sum-mode diagonal fix-up: cnt_k = active row hinges of row k + active column hinges of column k;
// db_k -= grad cnt_k a_k, da_k -= grad cnt_k b_k.
template <typename T>
__global__ void triplet_diag_fix_kernel(const T* __restrict__ a, int64_t lda, const T* __restrict__ b,
                                        int64_t ldb, int64_t n, int64_t d, const int* __restrict__ cnt_row,
                                        const int* __restrict__ cnt_col, int64_t splits, float grad,
                                        float* __restrict__ da, float* __restrict__ db) {
  for (int64_t k = blockIdx.x; k < n; k += gridDim.x) {
    int64_t c = 0;
    for (int64_t s = 0; s < splits; ++s) c += cnt_row[s * n + k] + cnt_col[s * n + k];
    const float w = grad * float(c);
    if (w == 0.f) continue;
    for (int64_t t = threadIdx.x; t < d; t += blockDim.x) {
      db[k * d + t] -= w * to_f(a[k * lda + t]);
      da[k * d + t] -= w * to_f(b[k * ldb + t]);
    }
  }
}

constexpr int64_t kMaxPartialBytes = int64_t(256) << 20;

struct FwdLayout {
  Plan plan;
  float* diag;
  uint64_t* part_key;
  float* part_sum;
  int64_t bytes;
};

FwdLayout forward_layout(std::uintptr_t ws, int64_t n, bool max_violation, int64_t num_splits) {
  FwdLayout L;
  L.plan = make_plan(n, n, num_splits, 1 << 16);
  Carver c(ws);
  L.diag = c.take<float>(n);
  L.part_key = c.take<uint64_t>(max_violation ? L.plan.splits * n : 0);
  L.part_sum = c.take<float>(max_violation ? 0 : L.plan.splits * n);
  L.bytes = c.bytes();
  return L;
}

struct BwdLayout {
  Plan plan;
  float* diag;
  float* coef_row;
  float* coef_col;
  float* part_da;
  float* part_db;
  int* cnt_row;
  int* cnt_col;
  int64_t bytes;
};

BwdLayout backward_layout(std::uintptr_t ws, int64_t n, int64_t d, bool max_violation, int64_t num_splits) {
  BwdLayout L;
  L.plan = make_plan(n, n, num_splits, std::max<int64_t>(1, kMaxPartialBytes / (n * d * 4)));
  const bool sum = !max_violation, split = sum && L.plan.splits > 1;
  Carver c(ws);
  L.diag = c.take<float>(sum ? n : 0);
  L.coef_row = c.take<float>(max_violation ? n : 0);
  L.coef_col = c.take<float>(max_violation ? n : 0);
  L.part_da = c.take<float>(split ? L.plan.splits * n * d : 0);
  L.part_db = c.take<float>(split ? L.plan.splits * n * d : 0);
  L.cnt_row = c.take<int>(sum ? L.plan.splits * n : 0);
  L.cnt_col = c.take<int>(sum ? L.plan.splits * n : 0);
  L.bytes = c.bytes();
  return L;
}

}  // namespace

int64_t triplet_forward_workspace_bytes(int64_t B, bool max_violation, int64_t num_splits) {
  return forward_layout(0, B, max_violation, num_splits).bytes;
}

int64_t triplet_backward_workspace_bytes(int64_t B, int64_t d, bool max_violation, int64_t num_splits) {
  return backward_layout(0, B, d, max_violation, num_splits).bytes;
}

void triplet_forward_cuda(std::uintptr_t a, int64_t lda, std::uintptr_t b, int64_t ldb, int64_t B, int64_t d,
                          double margin, bool max_violation, std::uintptr_t row_cost, std::uintptr_t col_cost,
                          std::uintptr_t row_idx, std::uintptr_t col_idx, int dtype, std::uintptr_t workspace,
                          int64_t num_splits, int device, std::uintptr_t stream) {
  const char* fn = "triplet_forward_cuda";
  check_sizes(fn, B, B, d, lda, ldb);
  CCR_CHECK_ARG(B < int64_t(0xFFFFFFFFu), std::string(fn) + ": B must be < 2^32 - 1");
  enter_device(device);
  cudaStream_t st = as_stream(stream);
  FwdLayout L = forward_layout(workspace, B, max_violation, num_splits);
  check_grid_y(L.plan.splits, fn);
  const dim3 grid(unsigned(L.plan.row_blocks), unsigned(L.plan.splits));
  const float m = float(margin);
  CCR_CUDA_DISPATCH(dtype, fn, {
    const scalar_t* ap = as_ptr<const scalar_t>(a);
    const scalar_t* bp = as_ptr<const scalar_t>(b);
    pair_dot_kernel<scalar_t><<<grid_1d(B), kThreads, 0, st>>>(bp, ldb, nullptr, 1, ap, lda, nullptr, B, d, L.diag);
    check_launch("pair_dot_kernel (diagonal)");
    // row pass (rows b_i, columns a_j): row_cost, row_idx; column pass (rows a_j, columns b_i): col_*
    for (int pass = 0; pass < 2; ++pass) {
      const scalar_t* P = pass == 0 ? bp : ap;
      const scalar_t* Q = pass == 0 ? ap : bp;
      const int64_t ldp = pass == 0 ? ldb : lda, ldq = pass == 0 ? lda : ldb;
      if (max_violation)
        triplet_rows_kernel<scalar_t, true><<<grid, kThreads, 0, st>>>(P, ldp, Q, ldq, B, d, L.diag, m,
                                                                       L.plan.per_split, L.part_key, nullptr);
      else
        triplet_rows_kernel<scalar_t, false><<<grid, kThreads, 0, st>>>(P, ldp, Q, ldq, B, d, L.diag, m,
                                                                        L.plan.per_split, nullptr, L.part_sum);
      check_launch("triplet_rows_kernel");
      triplet_finish_kernel<<<grid_1d(B), kThreads, 0, st>>>(
          L.part_key, L.part_sum, L.plan.splits, B, L.diag, m, max_violation,
          as_ptr<float>(pass == 0 ? row_cost : col_cost), as_ptr<int64_t>(pass == 0 ? row_idx : col_idx));
      check_launch("triplet_finish_kernel");
    }
  });
}

void triplet_backward_cuda(std::uintptr_t a, int64_t lda, std::uintptr_t b, int64_t ldb, int64_t B, int64_t d,
                           double margin, bool max_violation, std::uintptr_t row_idx, std::uintptr_t col_idx,
                           double grad, std::uintptr_t da, std::uintptr_t db, int dtype, std::uintptr_t workspace,
                           int64_t num_splits, int device, std::uintptr_t stream) {
  const char* fn = "triplet_backward_cuda";
  check_sizes(fn, B, B, d, lda, ldb);
  enter_device(device);
  cudaStream_t st = as_stream(stream);
  BwdLayout L = backward_layout(workspace, B, d, max_violation, num_splits);
  check_grid_y(L.plan.splits, fn);
  const float m = float(margin), g = float(grad);
  float* dap = as_ptr<float>(da);
  float* dbp = as_ptr<float>(db);
  const int rows_grid = int(std::min<int64_t>(B, 65535 * 8));
  CCR_CUDA_DISPATCH(dtype, fn, {
    const scalar_t* ap = as_ptr<const scalar_t>(a);
    const scalar_t* bp = as_ptr<const scalar_t>(b);
    if (max_violation) {
      const int64_t* ri = as_ptr<const int64_t>(row_idx);
      const int64_t* ci = as_ptr<const int64_t>(col_idx);
      triplet_active_kernel<scalar_t><<<grid_1d(B), kThreads, 0, st>>>(ap, lda, bp, ldb, B, d, ri, ci, m, g,
                                                                       L.coef_row, L.coef_col);
      check_launch("triplet_active_kernel");
      triplet_owned_kernel<scalar_t><<<rows_grid, 128, 0, st>>>(ap, lda, bp, ldb, B, d, ri, ci, L.coef_row,
                                                                L.coef_col, dap, dbp);
      check_launch("triplet_owned_kernel");
      triplet_scatter_kernel<scalar_t><<<rows_grid, 128, 0, st>>>(ap, lda, bp, ldb, B, d, ri, ci, L.coef_row,
                                                                  L.coef_col, dap, dbp);
      check_launch("triplet_scatter_kernel");
    } else {
      pair_dot_kernel<scalar_t><<<grid_1d(B), kThreads, 0, st>>>(bp, ldb, nullptr, 1, ap, lda, nullptr, B, d,
                                                                 L.diag);
      check_launch("pair_dot_kernel (diagonal)");
      GradParams p{};
      p.scale = nullptr;
      p.diag = L.diag;
      p.margin = m;
      p.grad = g;
      const bool split = L.plan.splits > 1;
      const dim3 grid(unsigned(L.plan.row_blocks), unsigned(L.plan.splits));
      p.count_part = L.cnt_row;  // db: rows b_i, columns a_j
      grad_rows_kernel<scalar_t, kGradTripletSum><<<grid, kThreads, 0, st>>>(bp, ldb, B, ap, lda, B, d,
                                                                             L.plan.per_split, p,
                                                                             split ? L.part_db : dbp);
      check_launch("grad_rows_kernel (db)");
      p.count_part = L.cnt_col;  // da: rows a_j, columns b_i
      grad_rows_kernel<scalar_t, kGradTripletSum><<<grid, kThreads, 0, st>>>(ap, lda, B, bp, ldb, B, d,
                                                                             L.plan.per_split, p,
                                                                             split ? L.part_da : dap);
      check_launch("grad_rows_kernel (da)");
      if (split) {
        sum_splits_kernel<<<grid_1d(B * d), kThreads, 0, st>>>(L.part_db, L.plan.splits, B * d, dbp);
        sum_splits_kernel<<<grid_1d(B * d), kThreads, 0, st>>>(L.part_da, L.plan.splits, B * d, dap);
        check_launch("sum_splits_kernel");
      }
      triplet_diag_fix_kernel<scalar_t><<<rows_grid, 128, 0, st>>>(ap, lda, bp, ldb, B, d, L.cnt_row, L.cnt_col,
                                                                   L.plan.splits, g, dap, dbp);
      check_launch("triplet_diag_fix_kernel");
    }
  });
}

}  // namespace cuda
}  // namespace ccr

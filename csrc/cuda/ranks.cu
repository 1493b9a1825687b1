// CUDA kernels of the target-rank op. Contract: docs/interop.md ("ranks"):
//   rank(t) = #{c : s_c > s_t} + #{c : s_c == s_t and c < t},  min over the valid targets, -1 without one.
//
// 1. pair_dot_kernel computes every target score s_t with the same fma chain as the tiles (common.cuh), so the
//    target meets its own score in the tile bit-identically and is excluded by the index rule, never by luck.
// 2. rank_count_kernel, grid (query blocks, gallery splits): CTA (x, y) counts, for each of its 64 queries and
//    each target, the gallery rows of split y that rank before the target. Each (split, query, target) counter
//    is owned by one thread (lane 0 of the half-warp that owns the query row in the tile layout), which
//    zero-initialises it and adds the half-warp's count per tile: no atomics, deterministic.
// 3. rank_final_kernel sums the splits and takes the minimum over the valid targets.
#include "common.cuh"

namespace ccr {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) rank_count_kernel(const T* __restrict__ Qm, int64_t ldq, int64_t nq,
                                                              const T* __restrict__ G, int64_t ldg, int64_t ng,
                                                              int64_t d, const int64_t* __restrict__ targets,
                                                              int64_t nt, const float* __restrict__ tscore,
                                                              int64_t per_split, int* __restrict__ part) {
  __shared__ TileSmem ts;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t r0 = int64_t(blockIdx.x) * kTile;
  const int64_t split = blockIdx.y;
  const int64_t col_blocks = (ng + kTile - 1) / kTile;
  const int64_t cb_begin = split * per_split, cb_end = min(col_blocks, cb_begin + per_split);
  int* cnt = part + split * nq * nt;
  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + ty + 16 * i;
      if (r < nq)
        for (int64_t t = 0; t < nt; ++t) cnt[r * nt + t] = 0;
    }
  }
  for (int64_t cbk = cb_begin; cbk < cb_end; ++cbk) {
    const int64_t c0 = cbk * kTile;
    float acc[4][4];
    tile_dot(Qm, ldq, nq, r0, G, ldg, ng, c0, d, ts, acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + ty + 16 * i;
      const bool row_ok = r < nq;
      for (int64_t t = 0; t < nt; ++t) {  // nt is uniform: every lane runs the shuffles below
        const int64_t tg = row_ok ? targets[r * nt + t] : -1;
        const float st = row_ok ? tscore[r * nt + t] : 0.f;
        int c_here = 0;
        if (tg >= 0) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int64_t c = c0 + tx + 16 * j;
            const float s = acc[i][j];
            c_here += (c < ng && (s > st || (s == st && c < tg))) ? 1 : 0;
          }
        }
        c_here = half_warp_sum_int(c_here);
        if (tx == 0 && tg >= 0) cnt[r * nt + t] += c_here;
      }
    }
  }
}

__global__ void rank_final_kernel(const int* __restrict__ part, int64_t splits, int64_t nq, int64_t nt,
                                  const int64_t* __restrict__ targets, int64_t* __restrict__ ranks,
                                  int64_t* __restrict__ all_ranks) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < nq; r += int64_t(gridDim.x) * blockDim.x) {
    int64_t best = -1;
    for (int64_t t = 0; t < nt; ++t) {
      int64_t v = -1;
      if (targets[r * nt + t] >= 0) {
        v = 0;
        for (int64_t s = 0; s < splits; ++s) v += part[(s * nq + r) * nt + t];
        if (best < 0 || v < best) best = v;
      }
      if (all_ranks != nullptr) all_ranks[r * nt + t] = v;
    }
    ranks[r] = best;
  }
}

constexpr int64_t kMaxPartialBytes = int64_t(256) << 20;

struct Layout {
  Plan plan;
  float* tscore;
  int* part;
  int64_t bytes;
};

Layout layout(std::uintptr_t ws, int64_t Q, int64_t G, int64_t T, int64_t num_splits) {
  Layout L;
  L.plan = make_plan(Q, G, num_splits, std::max<int64_t>(1, kMaxPartialBytes / (Q * T * 4)));
  Carver c(ws);
  L.tscore = c.take<float>(Q * T);
  L.part = c.take<int>(L.plan.splits * Q * T);
  L.bytes = c.bytes();
  return L;
}

}  // namespace

int64_t target_ranks_workspace_bytes(int64_t Q, int64_t G, int64_t T, int64_t num_splits) {
  return layout(0, Q, G, T, num_splits).bytes;
}

void target_ranks_cuda(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G,
                       int64_t d, std::uintptr_t targets, int64_t T, std::uintptr_t out_ranks,
                       std::uintptr_t out_all_ranks, int dtype, std::uintptr_t workspace, int64_t num_splits,
                       int device, std::uintptr_t stream) {
  const char* fn = "target_ranks_cuda";
  check_sizes(fn, Q, G, d, ldq, ldg);
  CCR_CHECK_ARG(T >= 1, std::string(fn) + ": T must be >= 1, got " + std::to_string(T));
  CCR_CHECK_ARG(G < int64_t(0x7FFFFFFF), std::string(fn) + ": gallery size must be < 2^31 - 1");
  enter_device(device);
  cudaStream_t st = as_stream(stream);
  Layout L = layout(workspace, Q, G, T, num_splits);
  check_grid_y(L.plan.splits, fn);
  const int64_t* tg = as_ptr<const int64_t>(targets);
  CCR_CUDA_DISPATCH(dtype, fn, {
    const scalar_t* qp = as_ptr<const scalar_t>(q);
    const scalar_t* gp = as_ptr<const scalar_t>(g);
    pair_dot_kernel<scalar_t><<<grid_1d(Q * T), kThreads, 0, st>>>(qp, ldq, nullptr, T, gp, ldg, tg, Q * T, d,
                                                                   L.tscore);
    check_launch("pair_dot_kernel (target scores)");
    rank_count_kernel<scalar_t><<<dim3(unsigned(L.plan.row_blocks), unsigned(L.plan.splits)), kThreads, 0, st>>>(
        qp, ldq, Q, gp, ldg, G, d, tg, T, L.tscore, L.plan.per_split, L.part);
    check_launch("rank_count_kernel");
  });
  rank_final_kernel<<<grid_1d(Q), kThreads, 0, st>>>(L.part, L.plan.splits, Q, T, tg, as_ptr<int64_t>(out_ranks),
                                                     out_all_ranks ? as_ptr<int64_t>(out_all_ranks) : nullptr);
  check_launch("rank_final_kernel");
}

}  // namespace cuda
}  // namespace ccr

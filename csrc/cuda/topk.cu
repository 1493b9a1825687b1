// CUDA kernels of the streaming top-K op. Contract: docs/interop.md ("topk"): scores[Q, k] sorted descending,
// ties -> lower gallery index, O(Q k) memory besides the inputs.
//
// topk_tiles_kernel  grid (query blocks, gallery splits). CTA (x, y) owns queries [64x, 64x+64) and the
//   gallery rows of split y (a contiguous run of 64-row tiles, `block_size` rows when given). For each of its
//   queries it keeps a sorted list of the k best candidates as 64-bit (score, index) keys (common.cuh: larger
//   key = better, key 0 = empty) in the workspace, double-buffered: lists[y][q][2][k]. Warp w owns queries
//   w, w+8, ..., w+56 of the block for the whole kernel, so a list is only touched by one warp (__syncwarp
//   orders its global accesses).
//   Per gallery tile: the 64x64 score tile goes to shared memory; for each owned query the warp
//     1. rejects candidates not better than the current k-th key with one compare (thr, kept in shared memory),
//     2. compacts the survivors (ballot), sorts them by rank counting (<= 64 of them),
//     3. merges them into the list: an old entry at p moves to p + #(survivors better), a survivor of rank x
//        goes to x + #(old entries better) (binary search); positions >= k fall off. Writes the other buffer.
// topk_merge_kernel  one CTA per query: every entry of every split's list gets its global rank
//   p + sum over the other splits of #(better entries) (binary search); ranks < k are written out. Keys are
//   unique, so the ranks are a permutation; empty keys always rank >= k because G >= k.
#include "common.cuh"

namespace ccr {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;

// number of entries of arr[0..n) (sorted descending) that are > key
__device__ __forceinline__ int64_t count_better(const uint64_t* arr, int64_t n, uint64_t key) {
  int64_t lo = 0, hi = n;  // invariant: arr[< lo] > key, arr[>= hi] <= key
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (arr[mid] > key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) topk_tiles_kernel(const T* __restrict__ Qm, int64_t ldq, int64_t nq,
                                                              const T* __restrict__ G, int64_t ldg, int64_t ng,
                                                              int64_t d, int64_t k, int64_t per_split,
                                                              uint64_t* __restrict__ lists) {
  __shared__ TileSmem ts;
  __shared__ float s_tile[kTile][kTile + 1];
  __shared__ uint64_t cand[kWarps][kTile];
  __shared__ uint64_t sorted_s[kWarps][kTile];
  __shared__ uint64_t thr[kTile];
  __shared__ int cur[kTile];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4, warp = tid >> 5, lane = tid & 31;
  const int64_t r0 = int64_t(blockIdx.x) * kTile;
  const int64_t split = blockIdx.y;
  const int64_t col_blocks = (ng + kTile - 1) / kTile;
  const int64_t cb_begin = split * per_split, cb_end = min(col_blocks, cb_begin + per_split);
  // list of query r (block-local rr), buffer b:
  auto list = [&](int rr, int b) { return lists + ((split * nq + (r0 + rr)) * 2 + b) * k; };

  for (int rr = warp; rr < kTile; rr += kWarps) {
    if (r0 + rr < nq)
      for (int64_t p = lane; p < k; p += 32) list(rr, 0)[p] = 0;
    if (lane == 0) { thr[rr] = 0; cur[rr] = 0; }
  }
  __syncwarp();

  for (int64_t cbk = cb_begin; cbk < cb_end; ++cbk) {
    const int64_t c0 = cbk * kTile;
    float acc[4][4];
    tile_dot(Qm, ldq, nq, r0, G, ldg, ng, c0, d, ts, acc);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s_tile[ty + 16 * i][tx + 16 * j] = acc[i][j];
    __syncthreads();
    const unsigned lt = (1u << lane) - 1u;
    for (int rr = warp; rr < kTile; rr += kWarps) {
      if (r0 + rr >= nq) break;  // warp-uniform; later rows are invalid too
      const uint64_t t = thr[rr];
      uint64_t key[2];
      bool sv[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t c = c0 + lane + 32 * h;
        key[h] = (c < ng) ? pack_key(s_tile[rr][lane + 32 * h], c) : 0;
        sv[h] = key[h] > t;
      }
      const unsigned m0 = __ballot_sync(0xffffffffu, sv[0]), m1 = __ballot_sync(0xffffffffu, sv[1]);
      const int n0 = __popc(m0), n = n0 + __popc(m1);
      if (n == 0) continue;
      if (sv[0]) cand[warp][__popc(m0 & lt)] = key[0];
      if (sv[1]) cand[warp][n0 + __popc(m1 & lt)] = key[1];
      __syncwarp();
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        if (!sv[h]) continue;
        int rank = 0;
        for (int x = 0; x < n; ++x) rank += cand[warp][x] > key[h] ? 1 : 0;
        sorted_s[warp][rank] = key[h];
      }
      __syncwarp();
      const int b = cur[rr];
      const uint64_t* old = list(rr, b);
      uint64_t* nxt = list(rr, 1 - b);
      for (int64_t p = lane; p < k; p += 32) {
        const uint64_t e = old[p];
        const int64_t np = p + count_better(sorted_s[warp], n, e);
        if (np < k) nxt[np] = e;
      }
      for (int x = lane; x < n; x += 32) {
        const uint64_t e = sorted_s[warp][x];
        const int64_t np = x + count_better(old, k, e);
        if (np < k) nxt[np] = e;
      }
      __syncwarp();
      if (lane == 0) {
        cur[rr] = 1 - b;
        thr[rr] = nxt[k - 1];
      }
      __syncwarp();
    }
    __syncthreads();  // s_tile is rewritten by the next tile
  }
  // leave every final list in buffer 0
  for (int rr = warp; rr < kTile; rr += kWarps) {
    if (r0 + rr >= nq) break;
    if (cur[rr] == 1) {
      const uint64_t* src = list(rr, 1);
      uint64_t* dst = list(rr, 0);
      for (int64_t p = lane; p < k; p += 32) dst[p] = src[p];
    }
  }
}

__global__ void topk_merge_kernel(const uint64_t* __restrict__ lists, int64_t splits, int64_t nq, int64_t k,
                                  float* __restrict__ scores, int64_t* __restrict__ indices) {
  for (int64_t r = blockIdx.x; r < nq; r += gridDim.x) {
    for (int64_t e = threadIdx.x; e < splits * k; e += blockDim.x) {
      const int64_t s = e / k, p = e % k;
      const uint64_t key = lists[((s * nq + r) * 2) * k + p];
      if (key == 0) continue;  // empty slot (its rank would be >= k)
      int64_t rank = p;
      for (int64_t o = 0; o < splits && rank < k; ++o)
        if (o != s) rank += count_better(lists + ((o * nq + r) * 2) * k, k, key);
      if (rank < k) {
        scores[r * k + rank] = key_score(key);
        indices[r * k + rank] = key_index(key);
      }
    }
  }
}

// block_size > 0: each split streams at least block_size gallery rows (rounded up to the 64-row tile), i.e. at
// most ceil(G / block_size) splits. The merge costs ~ splits^2 k log k per query: splits * k is kept moderate
// unless num_splits forces a count (tests).
Plan topk_plan(int64_t Q, int64_t G, int64_t k, int64_t block_size, int64_t num_splits) {
  int64_t cap = std::max<int64_t>(1, 16384 / k);
  if (block_size > 0) cap = std::min(cap, cdiv(G, cdiv(block_size, kTile) * kTile));
  return make_plan(Q, G, num_splits, cap);
}

}  // namespace

int64_t topk_workspace_bytes(int64_t Q, int64_t G, int64_t k, int64_t block_size, int64_t num_splits) {
  const Plan p = topk_plan(Q, G, k, block_size, num_splits);
  Carver c(0);
  c.take<uint64_t>(p.splits * Q * 2 * k);
  return c.bytes();
}

// (splits, gallery tiles per split) chosen for these sizes; exposed for tests.
std::pair<int64_t, int64_t> topk_cuda_plan(int64_t Q, int64_t G, int64_t k, int64_t block_size,
                                           int64_t num_splits) {
  const Plan p = topk_plan(Q, G, k, block_size, num_splits);
  return {p.splits, p.per_split};
}

void topk_cuda(std::uintptr_t q, int64_t ldq, std::uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
               int64_t k, int64_t block_size, std::uintptr_t out_scores, std::uintptr_t out_indices, int dtype,
               std::uintptr_t workspace, int64_t num_splits, int device, std::uintptr_t stream) {
  const char* fn = "topk_cuda";
  check_sizes(fn, Q, G, d, ldq, ldg);
  CCR_CHECK_ARG(k >= 1 && k <= G, std::string(fn) + ": need 1 <= k <= G=" + std::to_string(G) + ", got k=" +
                                      std::to_string(k));
  CCR_CHECK_ARG(G < int64_t(0xFFFFFFFFu), std::string(fn) + ": gallery size must be < 2^32 - 1");
  enter_device(device);
  cudaStream_t st = as_stream(stream);
  const Plan p = topk_plan(Q, G, k, block_size, num_splits);
  check_grid_y(p.splits, fn);
  Carver c(workspace);
  uint64_t* lists = c.take<uint64_t>(p.splits * Q * 2 * k);
  CCR_CUDA_DISPATCH(dtype, fn, {
    topk_tiles_kernel<scalar_t><<<dim3(unsigned(p.row_blocks), unsigned(p.splits)), kThreads, 0, st>>>(
        as_ptr<const scalar_t>(q), ldq, Q, as_ptr<const scalar_t>(g), ldg, G, d, k, p.per_split, lists);
    check_launch("topk_tiles_kernel");
  });
  topk_merge_kernel<<<int(std::min<int64_t>(Q, 65535 * 8)), kThreads, 0, st>>>(
      lists, p.splits, Q, k, as_ptr<float>(out_scores), as_ptr<int64_t>(out_indices));
  check_launch("topk_merge_kernel");
}

}  // namespace cuda
}  // namespace ccr

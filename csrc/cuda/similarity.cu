// CUDA kernel of the similarity op. Contract: docs/interop.md ("similarity"): scores[Q, G] = q g^T in fp32.
// Grid (gallery blocks, query blocks): the gallery, the long axis, is grid x (up to 2^31 - 1 CTAs; grid y allows
// only 65535, which 64-row gallery tiles exceed past ~4.2M rows). CTA (x, y) owns the 64x64 output tile
// (rows 64y, columns 64x); each thread writes its
// 4x4 elements (tile layout in common.cuh), a half-warp writing 16 consecutive floats of a row.
#include "common.cuh"

namespace ccr {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) similarity_kernel(const T* __restrict__ Qm, int64_t ldq, int64_t nq,
                                                              const T* __restrict__ G, int64_t ldg, int64_t ng,
                                                              int64_t d, float* __restrict__ out, int64_t ldo) {
  __shared__ TileSmem ts;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  float acc[4][4];
  tile_dot(Qm, ldq, nq, r0, G, ldg, ng, c0, d, ts, acc);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = r0 + ty + 16 * i;
    if (r >= nq) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t c = c0 + tx + 16 * j;
      if (c < ng) out[r * ldo + c] = acc[i][j];
    }
  }
}

}  // namespace

void similarity_cuda(std::uintptr_t q, std::uintptr_t g, int64_t Q, int64_t G, int64_t d, int64_t ldq, int64_t ldg,
                     int dtype, std::uintptr_t out, int64_t ldo, int device, std::uintptr_t stream) {
  const char* fn = "similarity_cuda";
  check_sizes(fn, Q, G, d, ldq, ldg);
  CCR_CHECK_ARG(ldo >= G, std::string(fn) + ": ldo must be >= G");
  enter_device(device);
  const int64_t qb = cdiv(Q, kTile);
  check_grid_y(qb, fn);
  CCR_CUDA_DISPATCH(dtype, fn, {
    similarity_kernel<scalar_t><<<dim3(unsigned(cdiv(G, kTile)), unsigned(qb)), kThreads, 0, as_stream(stream)>>>(
        as_ptr<const scalar_t>(q), ldq, Q, as_ptr<const scalar_t>(g), ldg, G, d, as_ptr<float>(out), ldo);
    check_launch("similarity_kernel");
  });
}

}  // namespace cuda
}  // namespace ccr

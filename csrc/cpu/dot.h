// The one inner-product routine of the CPU triplet / topk / ranks kernels (docs/interop.md).
//
// Every score a kernel compares with another (a target's score against the gallery's, a forward hinge against
// the backward's recomputed hinge) comes out of this single function, so equal inputs give bit-identical
// scores: the accumulation order is fixed (8 interleaved partial sums, a fixed reduction tree, then the tail)
// and the function is never inlined, so no call site can be compiled with a different contraction (FMA) choice.
#pragma once

#include <cstdint>

#ifdef CCR_FAST_WITH_OPENMP
#include <omp.h>
#endif

namespace ccr {

#if defined(__GNUC__) || defined(__clang__)
#define CCR_NOINLINE __attribute__((noinline))
#else
#define CCR_NOINLINE
#endif

// x . y over d elements, accumulated in T (float for float32, double for float64).
template <typename T>
CCR_NOINLINE T dot(const T* __restrict x, const T* __restrict y, std::int64_t d) {
  constexpr int kLanes = 8;  // two SSE / one AVX float vector: lets the compiler vectorise without reassociation
  T acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += x[k + l] * y[k + l];
  }
  T tail = 0;
  for (; k < d; ++k) tail += x[k] * y[k];
  return (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail;
}

inline int omp_threads() {
#ifdef CCR_FAST_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int omp_thread_id() {
#ifdef CCR_FAST_WITH_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// NaN-propagating hinge max(0, h): a NaN score gives a NaN cost instead of silently 0.
template <typename T>
inline T hinge(T h) {
  return (h > T(0) || h != h) ? h : T(0);
}

// The total order of (score, index) candidates used by topk: higher score first, ties -> lower index.
template <typename T>
inline bool better(T s1, std::int64_t i1, T s2, std::int64_t i2) {
  return s1 > s2 || (s1 == s2 && i1 < i2);
}

}  // namespace ccr

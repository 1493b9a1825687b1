// Small helpers shared by the CPU triplet / topk / ranks kernels. Every inner product they compare comes from
// ccr::score_tile / ccr::score_one (gemm_tile.h): one arithmetic for every score of the process.
#pragma once

#include <cstdint>

#ifdef CCR_FAST_WITH_OPENMP
#include <omp.h>
#endif

namespace ccr {

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

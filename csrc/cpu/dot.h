// The one inner-product routine of the CPU triplet / topk / ranks kernels (docs/interop.md).
//
// Every score a kernel compares with another (a target's score against the gallery's, a forward hinge against
// the backward's recomputed hinge) comes out of this single function, so equal inputs give bit-identical
// scores: the accumulation order is fixed (8 interleaved partial sums, a fixed reduction tree, then the tail),
// the functions are never inlined and floating-point contraction (FMA) is off, so every call site rounds alike;
// dot4 (four rows per call, sharing the loads of x) gives per row exactly what dot gives.
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

// Scores compared with each other must round identically: no FMA contraction inside the dot routines (they are
// never inlined, so the setting stays local to them).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
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

// x . y_r for four rows at once (x loaded once): out[r] is bit-identical to dot(x, y_r, d), the same operations
// in the same order per row, with floating-point contraction disabled around both.
template <typename T>
CCR_NOINLINE void dot4(const T* __restrict x, const T* y0, const T* y1, const T* y2, const T* y3, std::int64_t d,
                       T* out) {
  constexpr int kLanes = 8;
  T a0[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0}, a1[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  T a2[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0}, a3[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T xv = x[k + l];
      a0[l] += xv * y0[k + l];
      a1[l] += xv * y1[k + l];
      a2[l] += xv * y2[k + l];
      a3[l] += xv * y3[k + l];
    }
  }
  T t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  for (; k < d; ++k) {
    t0 += x[k] * y0[k];
    t1 += x[k] * y1[k];
    t2 += x[k] * y2[k];
    t3 += x[k] * y3[k];
  }
  const T* acc[4] = {a0, a1, a2, a3};
  const T tails[4] = {t0, t1, t2, t3};
  for (int r = 0; r < 4; ++r) {
    const T* a = acc[r];
    out[r] = (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) + tails[r];
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

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

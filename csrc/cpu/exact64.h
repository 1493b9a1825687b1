// The one float64 inner product of the exact retrieval ops (docs/exactness.md). Every float64 score that topk and
// target_ranks compare on the CPU comes from ccr::dot64: a fixed summation order (8 interleaved float64
// accumulators over j mod 8, combined in a fixed tree), compiled once (exact.cpp, never inlined), so the same pair
// of rows gives a bit-identical float64 score in every call (duplicate gallery rows tie exactly).
#pragma once

#include <cstdint>

namespace ccr {

double dot64(const float* a, const float* b, std::int64_t d);
double dot64(const double* a, const double* b, std::int64_t d);

// gamma_n = n u / (1 - n u): the classical bound of any-order summation of n terms with unit roundoff u.
inline double gamma_n(double n, double u) { return n * u / (1.0 - n * u); }

}  // namespace ccr

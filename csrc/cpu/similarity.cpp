// CPU (C++17 + OpenMP) kernels of the similarity op family. Contract: docs/interop.md ("similarity").
//
// out[q, g] = <queries_q, gallery_g>, computed in QT x GT blocks (the (query tile, gallery tile) pairs are the
// OpenMP work items; each block is written exactly once, no races). Each block is one ccr::score_tile
// (gemm_tile.h), the register-blocked tile shared by every CPU op family.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "common.h"
#include "gemm_tile.h"

namespace py = pybind11;
using std::int64_t;

namespace ccr {

namespace {

// 64 query rows x 256 gallery rows per block: the same cache reasoning as the contrastive tiles.
constexpr int64_t kTileQ = 64;
constexpr int64_t kTileG = 256;

template <typename T>
void similarity_impl(const T* q, const T* g, int64_t Q, int64_t G, int64_t d, int64_t ldq, int64_t ldg, T* out,
                     int64_t ldo) {
  const int64_t nq = (Q + kTileQ - 1) / kTileQ, ng = (G + kTileG - 1) / kTileG;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bq = 0; bq < nq; ++bq)
    for (int64_t bg = 0; bg < ng; ++bg) {
      const int64_t q0 = bq * kTileQ, g0 = bg * kTileG;
      score_tile(q + q0 * ldq, ldq, std::min(kTileQ, Q - q0), g + g0 * ldg, ldg, std::min(kTileG, G - g0), d,
                 out + q0 * ldo + g0, ldo);
    }
}

void similarity_cpu(std::uintptr_t q, std::uintptr_t g, int64_t Q, int64_t G, int64_t d, int64_t ldq, int64_t ldg,
                    int dtype, std::uintptr_t out, int64_t ldo) {
  CCR_CHECK_ARG(Q >= 1 && G >= 1 && d >= 1, "similarity_cpu: Q, G and d must be >= 1, got Q=" + std::to_string(Q) +
                                                " G=" + std::to_string(G) + " d=" + std::to_string(d));
  CCR_CHECK_ARG(ldq >= d && ldg >= d && ldo >= G, "similarity_cpu: need ldq, ldg >= d and ldo >= G, got ldq=" +
                                                      std::to_string(ldq) + " ldg=" + std::to_string(ldg) +
                                                      " ldo=" + std::to_string(ldo));
  CCR_CHECK_ARG(q && g && out, "similarity_cpu: null pointer");
  CCR_CHECK_ARG(dtype == kFloat32 || dtype == kFloat64,
                std::string("similarity CPU kernel takes float32 or float64, got dtype ") + dtype_name(dtype));
  if (dtype == kFloat32)
    similarity_impl<float>(as_ptr<const float>(q), as_ptr<const float>(g), Q, G, d, ldq, ldg, as_ptr<float>(out), ldo);
  else
    similarity_impl<double>(as_ptr<const double>(q), as_ptr<const double>(g), Q, G, d, ldq, ldg, as_ptr<double>(out),
                            ldo);
}

}  // namespace
}  // namespace ccr

void register_cpu_similarity(py::module_& m) {
  using namespace pybind11::literals;
  m.def("similarity_cpu", &ccr::similarity_cpu, py::call_guard<py::gil_scoped_release>(),
        "scores[Q,G] = queries gallery^T into a Python-allocated float32/float64 buffer with row stride ldo.",
        "q"_a, "g"_a, "Q"_a, "G"_a, "d"_a, "ldq"_a, "ldg"_a, "dtype"_a, "out"_a, "ldo"_a);
}

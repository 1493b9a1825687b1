// The single pybind11 module ccr_fast._C. Each op family registers its functions from its own file.
#include <pybind11/pybind11.h>

#include "common.h"

#ifdef CCR_FAST_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

void register_cpu_contrastive(py::module_& m);
void register_cpu_triplet(py::module_& m);
void register_cpu_topk(py::module_& m);
void register_cpu_ranks(py::module_& m);
void register_cpu_similarity(py::module_& m);
void register_cpu_blas_contrastive(py::module_& m);  // csrc/cpu/blas.cpp
void register_cpu_blas_retrieval(py::module_& m);    // csrc/cpu/blas_retrieval.cpp
void register_cpu_exact(py::module_& m);             // csrc/cpu/exact.cpp (float64 settling, bf16 top-k)
void register_cpu_sigmoid(py::module_& m);           // csrc/cpu/sigmoid.cpp (cpu and blas)
#ifdef CCR_FAST_WITH_CUDA
void register_cuda_ops(py::module_& m);  // csrc/cuda/*.cu
#endif

namespace ccr {
int cpu_num_threads() {
#ifdef CCR_FAST_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
}  // namespace ccr

PYBIND11_MODULE(_C, m) {
  m.doc() = "ccr_fast native kernels (torch-free; see docs/interop.md)";
#ifdef CCR_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef CCR_FAST_WITH_OPENMP
  m.attr("with_openmp") = true;
#else
  m.attr("with_openmp") = false;
#endif
  m.def("cpu_num_threads", &ccr::cpu_num_threads, "OpenMP threads used by the CPU kernels");
  register_cpu_contrastive(m);
  register_cpu_triplet(m);
  register_cpu_topk(m);
  register_cpu_ranks(m);
  register_cpu_similarity(m);
  register_cpu_blas_contrastive(m);
  register_cpu_blas_retrieval(m);
  register_cpu_exact(m);
  register_cpu_sigmoid(m);
#ifdef CCR_FAST_WITH_CUDA
  register_cuda_ops(m);
#endif
}

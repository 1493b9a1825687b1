// CPU (C++17 + OpenMP) kernels of the topk op family. Contract: docs/interop.md.
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

void register_cpu_topk(py::module_& m) {
  (void)m;  // TODO(op owner): bind the topk kernels here.
}

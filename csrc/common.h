// ccr_fast native backend: shared conventions (see docs/interop.md, the one place they are written down).
//
// The extension is torch-free. Python validates every tensor, allocates every output and workspace with
// torch, and passes:
//   * pointers as std::uintptr_t (tensor.data_ptr()),
//   * sizes and row strides as std::int64_t, in ELEMENTS (rows are contiguous along the feature axis),
//   * the input dtype as an int code (DType below),
//   * on CUDA, the device index and the stream handle (torch.cuda.current_stream().cuda_stream).
// Kernels never allocate framework memory, never synchronise the device, release the GIL, and report
// errors by throwing std::invalid_argument / std::runtime_error (pybind11 maps them to ValueError /
// RuntimeError).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ccr {

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat64: return "float64";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "unknown";
  }
}

#define CCR_CHECK_ARG(cond, msg)                                  \
  do {                                                            \
    if (!(cond)) throw std::invalid_argument(std::string(msg));   \
  } while (0)

template <typename T>
inline T* as_ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

// Number of OpenMP threads the CPU kernels use (1 without OpenMP).
int cpu_num_threads();

}  // namespace ccr

// pybind11 registration of the CUDA backend (bound names `<fn>_cuda`, plus workspace-size and plan queries that
// run on the host only). Contract: docs/interop.md; design: docs/cuda.md.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <utility>

namespace py = pybind11;
using namespace pybind11::literals;
using std::int64_t;
using std::uintptr_t;

namespace ccr {
namespace cuda {
int64_t contrastive_forward_workspace_bytes(int64_t M, int64_t N, bool compute_col, int64_t num_splits);
int64_t contrastive_backward_workspace_bytes(int64_t M, int64_t N, int64_t d, int64_t num_splits);
void contrastive_forward_cuda(uintptr_t x, uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy,
                              int dtype, uintptr_t scale, int64_t row_off, int64_t row_div, int64_t col_off,
                              int64_t col_div, bool compute_col, uintptr_t lse_row, uintptr_t lse_col,
                              uintptr_t pos_row, uintptr_t pos_col, uintptr_t workspace, int64_t num_splits,
                              int device, uintptr_t stream);
void contrastive_backward_cuda(uintptr_t x, uintptr_t y, int64_t M, int64_t N, int64_t d, int64_t ldx, int64_t ldy,
                               int dtype, uintptr_t scale, uintptr_t lse_row, uintptr_t lse_col, uintptr_t row_coef,
                               uintptr_t col_coef, double w_pos, int64_t row_off, int64_t row_div, int64_t col_off,
                               int64_t col_div, uintptr_t dx, uintptr_t dy, uintptr_t dscale, uintptr_t workspace,
                               int64_t num_splits, int device, uintptr_t stream);
int64_t triplet_forward_workspace_bytes(int64_t B, bool max_violation, int64_t num_splits);
int64_t triplet_backward_workspace_bytes(int64_t B, int64_t d, bool max_violation, int64_t num_splits);
void triplet_forward_cuda(uintptr_t a, int64_t lda, uintptr_t b, int64_t ldb, int64_t B, int64_t d, double margin,
                          bool max_violation, uintptr_t row_cost, uintptr_t col_cost, uintptr_t row_idx,
                          uintptr_t col_idx, int dtype, uintptr_t workspace, int64_t num_splits, int device,
                          uintptr_t stream);
void triplet_backward_cuda(uintptr_t a, int64_t lda, uintptr_t b, int64_t ldb, int64_t B, int64_t d, double margin,
                           bool max_violation, uintptr_t row_idx, uintptr_t col_idx, double grad, uintptr_t da,
                           uintptr_t db, int dtype, uintptr_t workspace, int64_t num_splits, int device,
                           uintptr_t stream);
int64_t topk_workspace_bytes(int64_t Q, int64_t G, int64_t k, int64_t block_size, int64_t num_splits);
std::pair<int64_t, int64_t> topk_cuda_plan(int64_t Q, int64_t G, int64_t k, int64_t block_size,
                                           int64_t num_splits);
void topk_cuda(uintptr_t q, int64_t ldq, uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d, int64_t k,
               int64_t block_size, uintptr_t out_scores, uintptr_t out_indices, int dtype, uintptr_t workspace,
               int64_t num_splits, int device, uintptr_t stream);
int64_t target_ranks_workspace_bytes(int64_t Q, int64_t G, int64_t T, int64_t num_splits);
void target_ranks_cuda(uintptr_t q, int64_t ldq, uintptr_t g, int64_t ldg, int64_t Q, int64_t G, int64_t d,
                       uintptr_t targets, int64_t T, uintptr_t out_ranks, uintptr_t out_all_ranks, int dtype,
                       uintptr_t workspace, int64_t num_splits, int device, uintptr_t stream);
void similarity_cuda(uintptr_t q, uintptr_t g, int64_t Q, int64_t G, int64_t d, int64_t ldq, int64_t ldg, int dtype,
                     uintptr_t out, int64_t ldo, int device, uintptr_t stream);
}  // namespace cuda
}  // namespace ccr

void register_cuda_ops(py::module_& m) {
  namespace c = ccr::cuda;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("contrastive_forward_workspace_bytes", &c::contrastive_forward_workspace_bytes,
        "Workspace bytes of contrastive_forward_cuda.", "M"_a, "N"_a, "compute_col"_a, "num_splits"_a = 0);
  m.def("contrastive_backward_workspace_bytes", &c::contrastive_backward_workspace_bytes,
        "Workspace bytes of contrastive_backward_cuda.", "M"_a, "N"_a, "d"_a, "num_splits"_a = 0);
  m.def("contrastive_forward_cuda", &c::contrastive_forward_cuda, nogil,
        "Row/column LSE and positive sums of Z = scale x y^T (docs/interop.md); fp32 outputs; scale is a device "
        "float32 scalar pointer.",
        "x"_a, "y"_a, "M"_a, "N"_a, "d"_a, "ldx"_a, "ldy"_a, "dtype"_a, "scale"_a, "row_off"_a, "row_div"_a,
        "col_off"_a, "col_div"_a, "compute_col"_a, "lse_row"_a, "lse_col"_a, "pos_row"_a, "pos_col"_a,
        "workspace"_a, "num_splits"_a, "device"_a, "stream"_a);
  m.def("contrastive_backward_cuda", &c::contrastive_backward_cuda, nogil,
        "dx[M,d], dy[N,d] (contiguous fp32) and dscale (fp32 scalar) of the contrastive loss (docs/interop.md).",
        "x"_a, "y"_a, "M"_a, "N"_a, "d"_a, "ldx"_a, "ldy"_a, "dtype"_a, "scale"_a, "lse_row"_a, "lse_col"_a,
        "row_coef"_a, "col_coef"_a, "w_pos"_a, "row_off"_a, "row_div"_a, "col_off"_a, "col_div"_a, "dx"_a, "dy"_a,
        "dscale"_a, "workspace"_a, "num_splits"_a, "device"_a, "stream"_a);
  m.def("triplet_forward_workspace_bytes", &c::triplet_forward_workspace_bytes,
        "Workspace bytes of triplet_forward_cuda.", "B"_a, "max_violation"_a, "num_splits"_a = 0);
  m.def("triplet_backward_workspace_bytes", &c::triplet_backward_workspace_bytes,
        "Workspace bytes of triplet_backward_cuda.", "B"_a, "d"_a, "max_violation"_a, "num_splits"_a = 0);
  m.def("triplet_forward_cuda", &c::triplet_forward_cuda, nogil,
        "VSE++ triplet forward on S = b a^T: row_cost, col_cost (fp32), row_idx, col_idx (int64; -1 in sum mode).",
        "a"_a, "lda"_a, "b"_a, "ldb"_a, "B"_a, "d"_a, "margin"_a, "max_violation"_a, "row_cost"_a, "col_cost"_a,
        "row_idx"_a, "col_idx"_a, "dtype"_a, "workspace"_a, "num_splits"_a, "device"_a, "stream"_a);
  m.def("triplet_backward_cuda", &c::triplet_backward_cuda, nogil,
        "Gradient of grad * sum(row_cost + col_cost): da, db [B, d] contiguous fp32.", "a"_a, "lda"_a, "b"_a,
        "ldb"_a, "B"_a, "d"_a, "margin"_a, "max_violation"_a, "row_idx"_a, "col_idx"_a, "grad"_a, "da"_a, "db"_a,
        "dtype"_a, "workspace"_a, "num_splits"_a, "device"_a, "stream"_a);
  m.def("topk_workspace_bytes", &c::topk_workspace_bytes, "Workspace bytes of topk_cuda.", "Q"_a, "G"_a, "k"_a,
        "block_size"_a = 0, "num_splits"_a = 0);
  m.def("topk_cuda_plan", &c::topk_cuda_plan, "(gallery splits, 64-row tiles per split) that topk_cuda uses.",
        "Q"_a, "G"_a, "k"_a, "block_size"_a = 0, "num_splits"_a = 0);
  m.def("topk_cuda", &c::topk_cuda, nogil,
        "Streaming top-k inner products: scores[Q,k] fp32 and indices[Q,k] int64, sorted descending, ties -> lower "
        "index.",
        "q"_a, "ldq"_a, "g"_a, "ldg"_a, "Q"_a, "G"_a, "d"_a, "k"_a, "block_size"_a, "out_scores"_a,
        "out_indices"_a, "dtype"_a, "workspace"_a, "num_splits"_a, "device"_a, "stream"_a);
  m.def("target_ranks_workspace_bytes", &c::target_ranks_workspace_bytes, "Workspace bytes of target_ranks_cuda.",
        "Q"_a, "G"_a, "T"_a, "num_splits"_a = 0);
  m.def("target_ranks_cuda", &c::target_ranks_cuda, nogil,
        "0-based stable descending rank of each query's targets (targets[Q,T] int64, -1 = padding): ranks[Q] "
        "(min over valid targets, -1 when none) and, when out_all_ranks != 0, all_ranks[Q,T].",
        "q"_a, "ldq"_a, "g"_a, "ldg"_a, "Q"_a, "G"_a, "d"_a, "targets"_a, "T"_a, "out_ranks"_a,
        "out_all_ranks"_a, "dtype"_a, "workspace"_a, "num_splits"_a, "device"_a, "stream"_a);
  m.def("similarity_cuda", &c::similarity_cuda, nogil, "scores[Q,G] = q g^T (fp32, row stride ldo).", "q"_a, "g"_a,
        "Q"_a, "G"_a, "d"_a, "ldq"_a, "ldg"_a, "dtype"_a, "out"_a, "ldo"_a, "device"_a, "stream"_a);
}

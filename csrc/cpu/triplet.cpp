// CPU (C++17 + OpenMP) kernels of the VSE++ triplet op family. Contract: docs/interop.md ("triplet").
//
// S[i,j] = b_i . a_j (B x B, never materialised), positives on the diagonal. Every score comes from
// ccr::score_tile / ccr::score_one (gemm_tile.h): one arithmetic for all of them, position-independent and
// symmetric (a_j . b_i == b_i . a_j bit for bit), so a hinge is active in the backward iff it was in the forward.
// Forward: one pass over (row block x column tile) tasks, one score tile each; rows are owned by one thread (running max/argmax or
// hinge sum), columns get per-thread partials merged afterwards in thread order (deterministic, no atomics).
// Backward: every hinge is a coefficient W[i,j] on S[i,j]; with n[i] = active hinges whose positive is (i,i),
//   db_i = sum_j W[i,j] a_j - g n[i] a_i,   da_j = sum_i W[i,j] b_i - g n[j] b_j.
// Max-violation: W has at most 2B nonzeros (from the saved argmax indices); the scatter runs over feature
// chunks so that threads never write the same memory. Sum of violations: two recompute passes, row-owned
// (db_tile += W_tile a_tile) then column-owned on the transposed tiles (da_tile += W^T_tile b_tile), both
// rank-K updates by ccr::gemm_acc.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu_util.h"
#include "gemm_tile.h"

namespace py = pybind11;

namespace {

using std::int64_t;

constexpr int64_t kRowBlock = 48;     // rows of b per task = rows of one score tile (row state on the stack)
constexpr int64_t kColTile = 128;     // rows of a per score tile: a 48 x 128 tile (24 KiB in float32)
constexpr int64_t kFeatChunk = 64;    // feature columns per thread in the sparse max-violation scatter

template <typename T>
std::vector<T> diagonal(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t B, int64_t d) {
  std::vector<T> diag(B);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B; ++i) diag[i] = ccr::score_one(b + i * ldb, a + i * lda, d);
  return diag;
}

template <typename T>
void forward(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t B, int64_t d, T margin, bool max_violation,
             T* row_cost, T* col_cost, int64_t* row_idx, int64_t* col_idx) {
  const std::vector<T> diag = diagonal(a, lda, b, ldb, B, d);
  const int nthreads = ccr::omp_threads();
  // Per-thread column partials: running max + argmax (max-violation) or hinge sum (sum of violations).
  std::vector<T> col_val(static_cast<size_t>(nthreads) * B, T(0));
  std::vector<int64_t> col_arg(static_cast<size_t>(nthreads) * B, -1);

#pragma omp parallel num_threads(nthreads)
  {
    const int tid = ccr::omp_thread_id();
    T* cval = col_val.data() + static_cast<size_t>(tid) * B;
    int64_t* carg = col_arg.data() + static_cast<size_t>(tid) * B;
    std::vector<T> tile(static_cast<size_t>(kRowBlock) * kColTile);
#pragma omp for schedule(static)
    for (int64_t i0 = 0; i0 < B; i0 += kRowBlock) {
      const int64_t i1 = std::min(B, i0 + kRowBlock);
      T rval[kRowBlock];
      int64_t rarg[kRowBlock];
      for (int64_t r = 0; r < kRowBlock; ++r) {
        rval[r] = T(0);
        rarg[r] = -1;
      }
      for (int64_t j0 = 0; j0 < B; j0 += kColTile) {
        const int64_t j1 = std::min(B, j0 + kColTile);
        ccr::score_tile(b + i0 * ldb, ldb, i1 - i0, a + j0 * lda, lda, j1 - j0, d, tile.data(), kColTile);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t r = i - i0;
          const T* srow = tile.data() + r * kColTile - j0;
          for (int64_t j = j0; j < j1; ++j) {
            if (j == i) continue;
            const T s = srow[j];
            if (max_violation) {
              // j and i ascend, so a strict '>' keeps the lower index on ties; the first candidate always
              // initialises (a NaN score then yields a NaN cost, not a missing index).
              if (rarg[r] < 0 || s > rval[r]) {
                rval[r] = s;
                rarg[r] = j;
              }
              if (carg[j] < 0 || s > cval[j]) {
                cval[j] = s;
                carg[j] = i;
              }
            } else {
              rval[r] += ccr::hinge(margin + s - diag[i]);
              cval[j] += ccr::hinge(margin + s - diag[j]);
            }
          }
        }
      }
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i - i0;
        if (max_violation) {
          row_idx[i] = rarg[r];
          row_cost[i] = ccr::hinge(margin + rval[r] - diag[i]);
        } else {
          row_idx[i] = -1;
          row_cost[i] = rval[r];
        }
      }
    }
  }

  // Merge the column partials in thread order; ties -> lower row index.
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < B; ++j) {
    T best = T(0);
    int64_t arg = -1;
    for (int t = 0; t < nthreads; ++t) {
      const T v = col_val[static_cast<size_t>(t) * B + j];
      const int64_t ai = col_arg[static_cast<size_t>(t) * B + j];
      if (max_violation) {
        if (ai < 0) continue;
        if (arg < 0 || v > best || (v == best && ai < arg)) {
          best = v;
          arg = ai;
        }
      } else {
        best += v;
      }
    }
    if (max_violation) {
      col_idx[j] = arg;
      col_cost[j] = ccr::hinge(margin + best - diag[j]);
    } else {
      col_idx[j] = -1;
      col_cost[j] = best;
    }
  }
}

template <typename T>
void backward_max(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t B, int64_t d, T margin,
                  const int64_t* row_idx, const int64_t* col_idx, T g, T* da, T* db) {
  const std::vector<T> diag = diagonal(a, lda, b, ldb, B, d);
  std::vector<char> row_on(B), col_on(B);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B; ++i) {
    row_on[i] = margin + ccr::score_one(b + i * ldb, a + row_idx[i] * lda, d) - diag[i] > T(0);
    col_on[i] = margin + ccr::score_one(b + col_idx[i] * ldb, a + i * lda, d) - diag[i] > T(0);
  }
  std::fill(da, da + B * d, T(0));
  std::fill(db, db + B * d, T(0));
  // Each thread owns a range of feature columns of da and db and walks all hinges in order: race-free and
  // deterministic. Cost O(B d).
#pragma omp parallel for schedule(static)
  for (int64_t k0 = 0; k0 < d; k0 += kFeatChunk) {
    const int64_t k1 = std::min(d, k0 + kFeatChunk);
    for (int64_t i = 0; i < B; ++i) {
      if (row_on[i]) {  // hinge m + S[i, j] - S[i, i], j = row_idx[i]
        const int64_t j = row_idx[i];
        for (int64_t k = k0; k < k1; ++k) {
          db[i * d + k] += g * (a[j * lda + k] - a[i * lda + k]);
          da[j * d + k] += g * b[i * ldb + k];
          da[i * d + k] -= g * b[i * ldb + k];
        }
      }
      if (col_on[i]) {  // hinge m + S[c, i] - S[i, i], c = col_idx[i]
        const int64_t c = col_idx[i];
        for (int64_t k = k0; k < k1; ++k) {
          db[c * d + k] += g * a[i * lda + k];
          db[i * d + k] -= g * a[i * lda + k];
          da[i * d + k] += g * (b[c * ldb + k] - b[i * ldb + k]);
        }
      }
    }
  }
}

template <typename T>
void backward_sum(const T* a, int64_t lda, const T* b, int64_t ldb, int64_t B, int64_t d, T margin, T g, T* da,
                  T* db) {
  const std::vector<T> diag = diagonal(a, lda, b, ldb, B, d);
  std::vector<int64_t> n_row(B, 0), n_col(B, 0);  // active hinges whose positive is row i / column j
  // Both passes walk (own block x other tile) score tiles; W = g * (on_row + on_col) off the diagonal, in place.
  // own = b rows (pass 1: tile[i, j] = S[i, j], db += W a) or a rows (pass 2: tile[j, i] = S[i, j], da += W^T b).
  for (int pass = 0; pass < 2; ++pass) {
    const T* own = pass == 0 ? b : a;
    const T* other = pass == 0 ? a : b;
    const int64_t ld_own = pass == 0 ? ldb : lda, ld_other = pass == 0 ? lda : ldb;
    T* grad = pass == 0 ? db : da;
    int64_t* n_own = pass == 0 ? n_row.data() : n_col.data();
#pragma omp parallel
    {
      std::vector<T> tile(static_cast<size_t>(kRowBlock) * kColTile);
#pragma omp for schedule(static)
      for (int64_t u0 = 0; u0 < B; u0 += kRowBlock) {
        const int64_t u1 = std::min(B, u0 + kRowBlock);
        std::fill(grad + u0 * d, grad + u1 * d, T(0));
        for (int64_t v0 = 0; v0 < B; v0 += kColTile) {
          const int64_t v1 = std::min(B, v0 + kColTile);
          ccr::score_tile(own + u0 * ld_own, ld_own, u1 - u0, other + v0 * ld_other, ld_other, v1 - v0, d,
                          tile.data(), kColTile);
          for (int64_t u = u0; u < u1; ++u) {
            T* w = tile.data() + (u - u0) * kColTile - v0;
            int64_t active = 0;
            for (int64_t v = v0; v < v1; ++v) {
              // (i, j) = (u, v) in pass 1, (v, u) in pass 2; on_own is the hinge whose positive is (u, u)
              const bool on_own = v != u && margin + w[v] - diag[u] > T(0);
              const bool on_other = v != u && margin + w[v] - diag[v] > T(0);
              active += on_own;
              w[v] = g * T(int(on_own) + int(on_other));
            }
            n_own[u] += active;
          }
          ccr::gemm_acc(tile.data(), kColTile, u1 - u0, v1 - v0, other + v0 * ld_other, ld_other, d, grad + u0 * d,
                        d);
        }
      }
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B; ++i) {
    const T c = g * T(n_row[i] + n_col[i]);
    for (int64_t k = 0; k < d; ++k) {
      db[i * d + k] -= c * a[i * lda + k];
      da[i * d + k] -= c * b[i * ldb + k];
    }
  }
}

void check_common(int64_t B, int64_t d, int64_t lda, int64_t ldb, int dtype) {
  CCR_CHECK_ARG(B >= 2, "triplet: B must be >= 2, got " + std::to_string(B));
  CCR_CHECK_ARG(d >= 1, "triplet: d must be >= 1, got " + std::to_string(d));
  CCR_CHECK_ARG(lda >= d && ldb >= d, "triplet: row strides lda/ldb must be >= d");
  CCR_CHECK_ARG(dtype == ccr::kFloat32 || dtype == ccr::kFloat64,
                std::string("triplet CPU kernels take float32/float64, got dtype ") + ccr::dtype_name(dtype));
}

void triplet_forward_cpu(std::uintptr_t a, int64_t lda, std::uintptr_t b, int64_t ldb, int64_t B, int64_t d,
                         double margin, bool max_violation, std::uintptr_t row_cost, std::uintptr_t col_cost,
                         std::uintptr_t row_idx, std::uintptr_t col_idx, int dtype) {
  check_common(B, d, lda, ldb, dtype);
  auto* ri = ccr::as_ptr<int64_t>(row_idx);
  auto* ci = ccr::as_ptr<int64_t>(col_idx);
  if (dtype == ccr::kFloat32) {
    forward<float>(ccr::as_ptr<const float>(a), lda, ccr::as_ptr<const float>(b), ldb, B, d, float(margin),
                   max_violation, ccr::as_ptr<float>(row_cost), ccr::as_ptr<float>(col_cost), ri, ci);
  } else {
    forward<double>(ccr::as_ptr<const double>(a), lda, ccr::as_ptr<const double>(b), ldb, B, d, margin,
                    max_violation, ccr::as_ptr<double>(row_cost), ccr::as_ptr<double>(col_cost), ri, ci);
  }
}

void triplet_backward_cpu(std::uintptr_t a, int64_t lda, std::uintptr_t b, int64_t ldb, int64_t B, int64_t d,
                          double margin, bool max_violation, std::uintptr_t row_idx, std::uintptr_t col_idx,
                          double grad, std::uintptr_t da, std::uintptr_t db, int dtype) {
  check_common(B, d, lda, ldb, dtype);
  const auto* ri = ccr::as_ptr<const int64_t>(row_idx);
  const auto* ci = ccr::as_ptr<const int64_t>(col_idx);
  if (max_violation) {
    for (int64_t i = 0; i < B; ++i) {
      CCR_CHECK_ARG(ri[i] >= 0 && ri[i] < B && ri[i] != i,
                    "triplet_backward: row_idx[" + std::to_string(i) + "] = " + std::to_string(ri[i]) +
                        " is not a negative index in [0, B) other than " + std::to_string(i));
      CCR_CHECK_ARG(ci[i] >= 0 && ci[i] < B && ci[i] != i,
                    "triplet_backward: col_idx[" + std::to_string(i) + "] = " + std::to_string(ci[i]) +
                        " is not a negative index in [0, B) other than " + std::to_string(i));
    }
  }
  if (dtype == ccr::kFloat32) {
    const auto* pa = ccr::as_ptr<const float>(a);
    const auto* pb = ccr::as_ptr<const float>(b);
    if (max_violation)
      backward_max<float>(pa, lda, pb, ldb, B, d, float(margin), ri, ci, float(grad), ccr::as_ptr<float>(da),
                          ccr::as_ptr<float>(db));
    else
      backward_sum<float>(pa, lda, pb, ldb, B, d, float(margin), float(grad), ccr::as_ptr<float>(da),
                          ccr::as_ptr<float>(db));
  } else {
    const auto* pa = ccr::as_ptr<const double>(a);
    const auto* pb = ccr::as_ptr<const double>(b);
    if (max_violation)
      backward_max<double>(pa, lda, pb, ldb, B, d, margin, ri, ci, grad, ccr::as_ptr<double>(da),
                           ccr::as_ptr<double>(db));
    else
      backward_sum<double>(pa, lda, pb, ldb, B, d, margin, grad, ccr::as_ptr<double>(da), ccr::as_ptr<double>(db));
  }
}

}  // namespace

void register_cpu_triplet(py::module_& m) {
  m.def("triplet_forward_cpu", &triplet_forward_cpu,
        "VSE++ triplet forward on S = b a^T: writes row_cost[B], col_cost[B] (acc dtype) and row_idx[B], col_idx[B] "
        "(int64, hardest negatives; -1 in sum mode). a, b: [B, d] rows with strides lda, ldb; dtype 0 f32 / 1 f64.",
        py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"), py::arg("B"), py::arg("d"), py::arg("margin"),
        py::arg("max_violation"), py::arg("row_cost"), py::arg("col_cost"), py::arg("row_idx"), py::arg("col_idx"),
        py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
  m.def("triplet_backward_cpu", &triplet_backward_cpu,
        "Gradient of grad * sum(row_cost + col_cost): writes da[B, d], db[B, d] (contiguous, acc dtype). "
        "Max-violation uses the saved row_idx/col_idx; sum mode recomputes the active hinges.",
        py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"), py::arg("B"), py::arg("d"), py::arg("margin"),
        py::arg("max_violation"), py::arg("row_idx"), py::arg("col_idx"), py::arg("grad"), py::arg("da"),
        py::arg("db"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>());
}

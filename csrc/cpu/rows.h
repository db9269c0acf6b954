// The CPU row loop's interface: plain data, so that the loop can be compiled once per CPU
// capability (rows_default.cpp, rows_avx2.cpp) and picked at run time.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../focal_loss_math.h"

namespace focal_loss_ext {

struct FocalLossProblem;

namespace cpu {

// The sigmoid losses (focal, FL*) and the softmax focal loss share the plan; the softmax loss
// ignores alpha_pos / alpha_neg / beta and writes one loss per row.
struct RowsPlan {
  c10::ScalarType dtype;
  GammaKind gamma_kind;
  bool star;              // sigmoid rows: FL* instead of FL
  const void* inputs;     // (rows, classes), dtype
  const void* targets;    // float form: (rows, classes), dtype; else nullptr
  const int64_t* labels;  // label form: (rows); else nullptr
  const void* alpha;      // optional (classes), opmath
  const void* weight;     // optional (rows), opmath
  double alpha_pos;
  double alpha_neg;
  double gamma;
  double beta;
  double smoothing;
  double loss_scale;     // multiplies each stored loss (reduction "none"); words as in problem.h
  double grad_prescale;  // multiplies each stored gradient
  int64_t classes;
  int64_t ignore_index;
  void* loss_out;  // reduction "none": (rows, classes) (softmax: (rows)), dtype; else nullptr
  void* grad_out;  // (rows, classes), dtype; nullptr when no gradient is wanted
};

struct RowsResult {
  double loss_sum = 0;     // sum of the (weighted, unscaled) losses of the rows
  int64_t count = 0;       // label form: elements (softmax: rows) in non-ignored rows
  bool bad_label = false;  // a label out of range that is not ignore_index
  int64_t first_bad_label = 0;
};

using RowsFn = RowsResult (*)(const RowsPlan&, int64_t row_begin, int64_t row_end);

RowsResult sigmoid_focal_rows_default(const RowsPlan&, int64_t, int64_t);
RowsResult sigmoid_focal_rows_avx2(const RowsPlan&, int64_t, int64_t);
RowsResult softmax_focal_rows_default(const RowsPlan&, int64_t, int64_t);
RowsResult softmax_focal_rows_avx2(const RowsPlan&, int64_t, int64_t);

// Whether the AVX2 row loops may run: the CPU has AVX2, FMA and F16C, and
// ATEN_CPU_CAPABILITY=default does not ask for the portable code (as it does for PyTorch's own
// kernels). Defined in sigmoid_focal_loss_kernel.cpp.
bool use_avx2();

// Runs rows_fn over p's rows in fixed-size blocks (in parallel), combines the blocks' partial
// sums in block order, and fills p.loss (when reduced) and p.grad_scale. Defined in
// sigmoid_focal_loss_kernel.cpp.
void run_rows(FocalLossProblem& p, RowsFn rows_fn);

}  // namespace cpu
}  // namespace focal_loss_ext

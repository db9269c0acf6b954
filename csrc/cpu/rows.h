// The CPU row loop's interface: plain data, so that the loop can be compiled once per CPU
// capability (rows_default.cpp, rows_avx2.cpp) and picked at run time.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../focal_loss_math.h"

namespace focal_loss_ext {
namespace cpu {

struct RowsPlan {
  c10::ScalarType dtype;
  GammaKind gamma_kind;
  const void* inputs;     // (rows, classes), dtype
  const void* targets;    // float form: (rows, classes), dtype; else nullptr
  const int64_t* labels;  // label form: (rows); else nullptr
  const void* alpha;      // optional (classes), opmath
  const void* weight;     // optional (rows), opmath
  double alpha_pos;
  double alpha_neg;
  double gamma;
  double smoothing;
  double loss_factor;  // multiplies each stored loss (reduction "none")
  double grad_factor;  // multiplies each stored gradient
  int64_t classes;
  int64_t ignore_index;
  void* loss_out;  // reduction "none": (rows, classes), dtype; else nullptr
  void* grad_out;  // (rows, classes), dtype; nullptr when no gradient is wanted
};

struct RowsResult {
  double loss_sum = 0;     // sum of the (weighted, unscaled) losses of the rows
  int64_t count = 0;       // elements in non-ignored rows (label form)
  bool bad_label = false;  // a label outside [0, classes] that is not ignore_index
  int64_t first_bad_label = 0;
};

using RowsFn = RowsResult (*)(const RowsPlan&, int64_t row_begin, int64_t row_end);

RowsResult sigmoid_focal_rows_default(const RowsPlan&, int64_t, int64_t);
RowsResult sigmoid_focal_rows_avx2(const RowsPlan&, int64_t, int64_t);

}  // namespace cpu
}  // namespace focal_loss_ext

// The CPU row loops' interface: plain data, so that the loops can be compiled once per
// instruction set (rows_portable.cpp, rows_avx2.cpp, rows_avx512.cpp, each with its own compiler
// flags; see setup.py) and one set picked at run time (rows.cpp).
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
  void* loss_out;    // reduction "none": (rows, classes) (softmax: (rows)); else nullptr
  bool opmath_loss;  // loss_out holds opmath values, else dtype ones
  void* grad_out;    // (rows, classes), dtype; nullptr when no gradient is wanted
};

struct RowsResult {
  double loss_sum = 0;     // sum of the (weighted, unscaled) losses of the rows
  int64_t count = 0;       // label form: elements (softmax: rows) in non-ignored rows
  bool bad_label = false;  // a label out of range that is not ignore_index
  int64_t first_bad_label = 0;
};

using RowsFn = RowsResult (*)(const RowsPlan&, int64_t row_begin, int64_t row_end);

// The vector primitives of vec_math.h, exposed so that tests can hold them against float64.
enum class VecMathFn : int { Exp = 0, Log1pUnit = 1 };
using VecMathApplyFn = void (*)(VecMathFn, const float* in, float* out, int64_t n);

// What one instruction-set build provides.
struct RowKernels {
  RowsFn sigmoid;
  RowsFn softmax;
  VecMathApplyFn vec_math;
};

// One per build, in the namespace at::vec uses for that ISA.
namespace DEFAULT {
extern const RowKernels kRowKernels;
}
#if defined(FOCAL_LOSS_EXT_X86_ISAS)
namespace AVX2 {
extern const RowKernels kRowKernels;
}
namespace AVX512 {
extern const RowKernels kRowKernels;
}
#endif

// The instruction sets, from the most portable up.
enum class Isa : int { Portable = 0, Avx2 = 1, Avx512 = 2 };

// The build in use: the widest the CPU supports, or the one FOCAL_LOSS_EXT_CPU_ISA names
// (checked: a bad name or an ISA this CPU lacks is an error). Chosen once, on first use.
const RowKernels& row_kernels();

// Runs rows_fn over p's rows in fixed-size blocks (in parallel), combines the blocks' partial
// sums in block order, and fills p.loss (when reduced) and p.grad_scale.
void run_rows(FocalLossProblem& p, RowsFn rows_fn);

}  // namespace cpu
}  // namespace focal_loss_ext

// The row loops and vector math of one instruction set: included by rows_portable.cpp,
// rows_avx2.cpp and rows_avx512.cpp, which setup.py compiles with that ISA's flags and
// CPU_CAPABILITY (the namespace at::vec and this build's kRowKernels live in).
#pragma once

#ifndef CPU_CAPABILITY
#error "compile rows_<isa>.cpp with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512 (setup.py does)"
#endif

#include "sigmoid_rows.h"
#include "softmax_rows.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

void vec_math_apply(VecMathFn fn, const float* in, float* out, int64_t n) {
  using Vec = at::vec::Vectorized<float>;
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), n - i);
    const Vec x = load<float>(in + i, m);
    store(out + i, fn == VecMathFn::Exp ? Math<Vec>::exp(x) : Math<Vec>::log1p_unit(x), m);
  }
}

}  // namespace

namespace CPU_CAPABILITY {
extern const RowKernels kRowKernels{&sigmoid_rows, &softmax_rows, &vec_math_apply};
}

}  // namespace cpu
}  // namespace focal_loss_ext

// The row loops with at::vec's AVX2 implementation (8 float lanes, Sleef exp/log1p/pow).
// Only this file is compiled for AVX2 + FMA (the pragma below, so setup.py needs no per-file
// flags); the dispatcher calls it only where the CPU has them, and not under
// ATEN_CPU_CAPABILITY=default.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma,f16c")
// g++ (unlike gcc) does not define the feature macros for a target pragma; at::vec and Sleef's
// header select their AVX2 code by them.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FOCAL_LOSS_EXT_HAVE_AVX2 1
#endif

#include "rows_impl.h"
#include "softmax_rows_impl.h"

namespace focal_loss_ext {
namespace cpu {

RowsResult sigmoid_focal_rows_avx2(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
#if defined(FOCAL_LOSS_EXT_HAVE_AVX2)
  return rows_dispatch(p, row_begin, row_end);
#else
  return sigmoid_focal_rows_default(p, row_begin, row_end);
#endif
}

RowsResult softmax_focal_rows_avx2(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
#if defined(FOCAL_LOSS_EXT_HAVE_AVX2)
  return softmax_rows_dispatch(p, row_begin, row_end);
#else
  return softmax_focal_rows_default(p, row_begin, row_end);
#endif
}

}  // namespace cpu
}  // namespace focal_loss_ext

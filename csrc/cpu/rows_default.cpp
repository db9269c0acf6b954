// The row loops with portable at::vec (no instruction-set extensions): runs on any CPU.
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#endif

#include "rows_impl.h"
#include "softmax_rows_impl.h"

namespace focal_loss_ext {
namespace cpu {

RowsResult sigmoid_focal_rows_default(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  return rows_dispatch(p, row_begin, row_end);
}

RowsResult softmax_focal_rows_default(const RowsPlan& p, int64_t row_begin, int64_t row_end) {
  return softmax_rows_dispatch(p, row_begin, row_end);
}

}  // namespace cpu
}  // namespace focal_loss_ext

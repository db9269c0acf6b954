// Small kernels, each breaking one CUDA rule (or keeping them all), that show the emulator
// catches what it claims to. Built into the emulated flavour only, as the operator
// focal_loss_ext_emu::selftest(case) (tests/test_emulated_device.py).
#include <torch/library.h>

#include <atomic>
#include <string>

#include "cuda_emu.h"

namespace focal_loss_ext {
namespace emu_selftest {
namespace {

constexpr int kBlock = 64;

std::atomic<int> blocks_started{0};

__global__ void rules_kernel(int which, float* out) {
  const int t = threadIdx.x;
  const int lane = t % 32;
  FOCAL_LOSS_EXT_SHARED_ARRAY(float, cell, kBlock);
  if (which == 0) {  // keeps every rule: shared memory, barrier, shuffles and votes
    cell[t] = static_cast<float>(t);
    __syncthreads();
    float v = cell[kBlock - 1 - t];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    const unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
    const int all = __all_sync(0xffffffffu, lane < 32);
    const int any = __any_sync(0xffffffffu, lane == 31);
    const float up = __shfl_up_sync(0xffffffffu, static_cast<float>(lane), 1);
    // lanes 0-15 only, with a mask of just them, in segments of 8
    const float idx = lane < 16 ? __shfl_sync(0x0000ffffu, static_cast<float>(lane), 3, 8) : -1.0f;
    __syncwarp();
    out[t * 6 + 0] = v;
    out[t * 6 + 1] = static_cast<float>(ballot);
    out[t * 6 + 2] = static_cast<float>(all + 2 * any);
    out[t * 6 + 3] = up;
    out[t * 6 + 4] = idx;
    out[t * 6 + 5] = static_cast<float>(__ldg(&out[t * 6 + 0]) == v);
    return;
  }
  if (which == 1) {  // reads shared memory that nobody wrote: poison
    out[t] = cell[t];
    return;
  }
  if (which == 2) {  // a barrier only the first warp reaches
    if (t < 32) __syncthreads();
    return;
  }
  if (which == 3) {  // a shuffle in divergent code: half the lanes never arrive
    float v = 1.0f;
    if (lane < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[t] = v;
    return;
  }
  if (which == 4) {  // a mask that leaves out the calling lane
    out[t] = __shfl_sync(0x0000ffffu, 1.0f, 0);
    return;
  }
  if (which == 5) {  // lanes 0-15 read lane 20, outside their mask
    if (lane < 16) out[t] = __shfl_sync(0x0000ffffu, 1.0f, 20);
    return;
  }
  if (which == 6) {  // a device assert
    CUDA_KERNEL_ASSERT(t != 5);
    return;
  }
}

// Writes, per block, the position at which the block ran.
__global__ void order_kernel(float* out) {
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<float>(blocks_started++);
}

at::Tensor selftest(const std::string& name) {
  const std::string cases[] = {"rules", "poison", "barrier", "divergent_shuffle", "mask", "outside_mask", "assert"};
  if (name == "order") {
    at::Tensor out = at::zeros({16});
    blocks_started = 0;
    FOCAL_LOSS_EXT_LAUNCH(order_kernel, 16, kBlock, 0, nullptr)(out.mutable_data_ptr<float>());
    return out;
  }
  for (int which = 0; which < 7; ++which) {
    if (name != cases[which]) continue;
    at::Tensor out = at::zeros({kBlock * 6});
    FOCAL_LOSS_EXT_LAUNCH(rules_kernel, 2, kBlock, 0, nullptr)(which, out.mutable_data_ptr<float>());
    return out;
  }
  TORCH_CHECK(false, "selftest: unknown case '", name, "'");
}

}  // namespace
}  // namespace emu_selftest
}  // namespace focal_loss_ext

TORCH_LIBRARY(focal_loss_ext_emu, m) {
  m.def("selftest(str case) -> Tensor", &focal_loss_ext::emu_selftest::selftest);
}

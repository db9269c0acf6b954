// Launch sizing, fixed-order reductions and the one-block finalize kernel that the CUDA
// kernels of the focal-loss family share. Everything is file-local to each including .cu.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../focal_loss_math.h"

namespace focal_loss_ext {
namespace cuda {
namespace {

// 256 threads = 8 warps: at 8 resident blocks per SM that is the full 2048 threads of a Hopper
// SM, the occupancy a latency-bound streaming loop wants; also the width of the block
// reductions below.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// 16-byte accesses: the widest single load/store instruction (LDG.E.128 / STG.E.128).
constexpr int kAccessBytes = 16;

// The two pieces of CUDA syntax a host C++ compiler cannot read, as macros, so that the kernels
// also build as C++ against the emulated device (csrc/emu), which defines its own versions first.
#ifndef FOCAL_LOSS_EXT_LAUNCH
#define FOCAL_LOSS_EXT_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#endif
#ifndef FOCAL_LOSS_EXT_SHARED_ARRAY
#define FOCAL_LOSS_EXT_SHARED_ARRAY(type, name, size) __shared__ type name[size]
#endif

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

bool aligned(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % kAccessBytes == 0;
}

int multiprocessor_count(int device) {
  // Read once per device: cudaDeviceGetAttribute does not synchronize, but it is not free.
  static int counts[64] = {};
  const bool cached = device >= 0 && device < 64;
  if (cached && counts[device] > 0) return counts[device];
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (cached) counts[device] = count;
  return count;
}

// How many blocks of this kernel fit on one SM at once (registers decide: 37-64 per thread
// for the sigmoid kernels, so 4-6 blocks of 256, not the 8 that 2048 threads would allow).
template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0));
  return std::max(blocks, 1);
}

// A persistent grid: one wave of resident blocks, or fewer when there is less work.
int64_t grid_for(int64_t work_items, int device, int blocks_per_sm) {
  const int64_t wanted = (work_items + kThreads - 1) / kThreads;
  const int64_t resident = static_cast<int64_t>(multiprocessor_count(device)) * blocks_per_sm;
  return std::max<int64_t>(1, std::min(wanted, resident));
}

// Sum over the block in a fixed order (shuffle tree within warps, then warp results in
// order); the result is valid in thread 0.
template <typename T>
__device__ T block_sum(T value) {
  FOCAL_LOSS_EXT_SHARED_ARRAY(T, warp_sums, kWarps);
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  T total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return total;
}

// Butterfly sum / max over a warp: every lane ends with the same value, bit for bit (each
// step combines the same two partial results on both lanes, and + and max are commutative).
template <typename T>
__device__ __forceinline__ T warp_all_sum(T value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <typename T>
__device__ __forceinline__ T warp_all_max(T value) {
  for (int offset = 16; offset > 0; offset /= 2) value = math::max(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// loss_scale without the count (problem.h): host_scale over the device normalizer, if any.
// Args is any kernel-argument struct with normalizer and host_scale members.
template <typename Args>
__device__ __forceinline__ auto loss_scale_of(const Args& a) {
  return a.normalizer != nullptr ? a.host_scale / *a.normalizer : a.host_scale;
}

// One block: sums the partials in a fixed order and writes the loss and grad_scale. Args also
// needs prescale_grad and divide_by_count.
template <typename scalar_t, typename Args>
__global__ void __launch_bounds__(kThreads) finalize_kernel(const at::opmath_type<scalar_t>* __restrict__ partial_sums,
                                                            const int64_t* __restrict__ partial_counts,
                                                            int64_t partials,
                                                            scalar_t* __restrict__ loss,
                                                            at::opmath_type<scalar_t>* __restrict__ grad_scale,
                                                            const Args a) {
  using opmath_t = at::opmath_type<scalar_t>;
  opmath_t sum = 0;
  int64_t count = 0;
  for (int64_t i = threadIdx.x; i < partials; i += kThreads) {
    sum += partial_sums[i];
    count += partial_counts[i];
  }
  sum = block_sum(sum);
  if (a.divide_by_count) count = block_sum(count);
  if (threadIdx.x != 0) return;
  const opmath_t loss_scale = loss_scale_of(a);
  opmath_t scale = a.prescale_grad ? opmath_t(1) : loss_scale;
  if (a.divide_by_count) {
    sum /= static_cast<opmath_t>(count);  // NaN when every row is ignored, as for an empty mean
    scale = count > 0 ? scale / static_cast<opmath_t>(count) : opmath_t(0);
  }
  *loss = static_cast<scalar_t>(sum * loss_scale);
  *grad_scale = scale;
}

}  // namespace
}  // namespace cuda
}  // namespace focal_loss_ext

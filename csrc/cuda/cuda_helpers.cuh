// Launch sizing and fixed-order reductions, shared by the CUDA kernels of the focal-loss family.
// Everything is file-local to each including .cu.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
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

// Elements of T in one 16-byte access.
template <typename T>
constexpr int kPackElems = kAccessBytes / static_cast<int>(sizeof(T));

bool aligned(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % kAccessBytes == 0;
}

// V consecutive elements between memory at p and registers, in accesses of W elements; p is
// aligned to W elements.
template <int W, typename T, int V>
__device__ __forceinline__ void load_pieces(const T* p, T (&v)[V]) {
#pragma unroll
  for (int i = 0; i < V; i += W) {
    const Pack<T, W> piece = *reinterpret_cast<const Pack<T, W>*>(p + i);
#pragma unroll
    for (int j = 0; j < W; ++j) v[i + j] = piece.v[j];
  }
}

template <int W, typename T, int V>
__device__ __forceinline__ void store_pieces(T* p, const T (&v)[V]) {
#pragma unroll
  for (int i = 0; i < V; i += W) {
    Pack<T, W> piece;
#pragma unroll
    for (int j = 0; j < W; ++j) piece.v[j] = v[i + j];
    *reinterpret_cast<Pack<T, W>*>(p + i) = piece;
  }
}

// The widest access, up to 16 bytes, for V elements of T.
template <typename T, int V>
constexpr int kWidest = std::min(V, kPackElems<T>);

// V consecutive elements from p (aligned to one element) with the widest accesses that p's
// alignment allows: one 16-byte access when p is aligned to 16, else 8-, 4-, 2-byte pieces. The
// values are the same whichever accesses are used, so nothing computed from them depends on the
// alignment.
template <typename T, int V, int W = kWidest<T, V>>
__device__ __forceinline__ void load_widest(const T* p, T (&v)[V]) {
  if constexpr (W > 1) {
    if (reinterpret_cast<uintptr_t>(p) % (W * sizeof(T)) != 0) return load_widest<T, V, W / 2>(p, v);
  }
  load_pieces<W>(p, v);
}

template <typename T, int V, int W = kWidest<T, V>>
__device__ __forceinline__ void store_widest(T* p, const T (&v)[V]) {
  if constexpr (W > 1) {
    if (reinterpret_cast<uintptr_t>(p) % (W * sizeof(T)) != 0) return store_widest<T, V, W / 2>(p, v);
  }
  store_pieces<W>(p, v);
}

// The first n <= V elements at p; a pack cut short by the end of the data (n < V) is read
// element by element, and its unread slots are zero.
template <typename T, int V>
__device__ __forceinline__ void load_elements(const T* p, int n, T (&v)[V]) {
  if (n == V) return load_widest(p, v);
#pragma unroll
  for (int j = 0; j < V; ++j) v[j] = j < n ? p[j] : T(0);
}

// The store of load_elements. kAligned: p is known to be aligned to the widest access (a fresh
// output written from its first element in whole packs), so no alignment is tested.
template <bool kAligned, typename T, int V>
__device__ __forceinline__ void store_elements(T* p, int n, const T (&v)[V]) {
  if (n == V) {
    if constexpr (kAligned) {
      return store_pieces<kWidest<T, V>>(p, v);
    } else {
      return store_widest(p, v);
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (j < n) p[j] = v[j];
  }
}

// Per-device values that cannot change while the process runs (a device's SM count, a kernel's
// occupancy on it), each computed on its device's first use. Lock-free and race-free: a slot is
// an atomic int, 0 while unknown; two threads that meet on a first use both compute the same
// value and both store it. Devices beyond the table (none on current machines) are not cached.
class PerDeviceCache {
 public:
  template <typename Compute>
  int get(int device, Compute&& compute) {
    if (device < 0 || device >= kMaxDevices) return compute();
    std::atomic<int>& slot = slots_[device];
    int value = slot.load(std::memory_order_relaxed);
    if (value == 0) {
      value = compute();
      slot.store(value, std::memory_order_relaxed);
    }
    return value;
  }

 private:
  static constexpr int kMaxDevices = 64;
  std::atomic<int> slots_[kMaxDevices]{};
};

// The device the launches go to: the current one, which the operator's device guard has set
// to the inputs' device.
int launch_device() {
  return c10::cuda::current_device();
}

int multiprocessor_count(int device) {
  // Per device: cudaDeviceGetAttribute does not synchronize, but it is not free.
  static PerDeviceCache counts;
  return counts.get(device, [device] {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
  });
}

// How many blocks of this kernel fit on one SM of the current device at once (registers decide:
// 37-64 per thread for the sigmoid kernels, so 4-6 blocks of 256 on Hopper, not the 8 that 2048
// threads would allow). Cached per kernel (each instantiation has its own table) and device.
template <auto kKernel>
int resident_blocks_per_sm(int device) {
  static PerDeviceCache blocks_per_sm;
  return blocks_per_sm.get(device, [] {
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kKernel, kThreads, 0));
    return std::max(blocks, 1);
  });
}

// A persistent grid for kKernel on the current device: one wave of resident blocks, or one
// block per work item (tile) when there are fewer.
template <auto kKernel>
int64_t grid_for(int64_t work_items) {
  const int device = launch_device();
  const int64_t resident = static_cast<int64_t>(multiprocessor_count(device)) * resident_blocks_per_sm<kKernel>(device);
  return std::max<int64_t>(1, std::min(work_items, resident));
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

}  // namespace
}  // namespace cuda
}  // namespace focal_loss_ext

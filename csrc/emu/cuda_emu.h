// An emulated CUDA device, so that the kernels in csrc/cuda run unchanged on the CPU.
//
// The emulated build (setup.py, FOCAL_LOSS_EXT_EMULATE_CUDA=1) compiles each csrc/cuda/*.cu as
// host C++ with this header included first, and registers the kernels' operators as the CPU
// kernels. A launch runs block after block on the calling thread; inside a block every CUDA
// thread is a fiber (ucontext) of its own, switched only at __syncthreads and at warp
// operations, so barriers and shuffles behave as on a GPU and their misuse is an error:
//   - a __syncthreads that some thread of the block does not reach (it exited, or waits at
//     another barrier or at a warp operation);
//   - a shuffle / vote / __syncwarp whose mask leaves out the calling lane, names a lane that
//     does not arrive at the same call (same source line, same mask), or reads a lane outside it;
//   - a failed CUDA_KERNEL_ASSERT.
// Each becomes a c10::Error naming the kernel, its launch site, the block and the threads.
// Shared memory is filled with 0xff bytes (NaN in every float type) at the start of each
// block, and every tensor an emulated operator allocates is filled the same way, so a missing
// barrier or an output element a kernel forgets to write shows up as NaN.
//
// Run-time settings, read at every launch:
//   FOCAL_LOSS_EXT_EMU_BLOCK_ORDER  forward (default), reverse, random, or random:SEED
//   FOCAL_LOSS_EXT_EMU_SMS          multiprocessor count of the fake device (default 132, an H100)
// Each FOCAL_LOSS_EXT_EMU_SMS value seen is a device of its own (c10::cuda::current_device()
// gives 0 for the first, 1 for the next, ...), so that changing it between calls behaves like
// moving to another GPU, and per-device caches in the kernels' host code stay right.
//
// What this cannot show: anything about the memory model between blocks (they run one after
// another), code generation, speed, or CUDA graphs.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- Qualifiers: plain host C++ --------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

// ---- Built-in types and the runtime API subset the kernels' host code calls -----------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};

using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidDevice = 101, cudaErrorInvalidValue = 1 };
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16
};
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorInvalidDevice ? "invalid device ordinal" : "invalid argument";
}
inline cudaError_t cudaGetLastError() {
  return cudaSuccess;
}

namespace cuda_emu {

// The emulated devices: the current one is that of FOCAL_LOSS_EXT_EMU_SMS (see above); the
// multiprocessor count of a device index it has given out.
int current_device();
int multiprocessor_count(int device);
constexpr int kMaxDevices = 64;
// Blocks of 256 threads resident per multiprocessor in the occupancy query: 4, as the
// register counts of the sigmoid kernels give on Hopper.
constexpr int kResidentBlocksPerSm = 4;

}  // namespace cuda_emu

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= cuda_emu::kMaxDevices) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = cuda_emu::multiprocessor_count(device);
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int block_size, size_t) {
  if (block_size <= 0 || block_size > 1024) return cudaErrorInvalidValue;
  *blocks = std::max(1, std::min(cuda_emu::kResidentBlocksPerSm, 2048 / block_size));
  return cudaSuccess;
}

#define C10_CUDA_CHECK(expr)                                                                                           \
  do {                                                                                                                 \
    const cudaError_t cuda_emu_status = (expr);                                                                        \
    TORCH_CHECK(cuda_emu_status == cudaSuccess, "CUDA error (emulated device): ", cudaGetErrorString(cuda_emu_status), \
                " from ", #expr, " at ", __FILE__, ":", __LINE__);                                                     \
  } while (0)
// Launch errors are raised by the launch itself (synchronously), so there is nothing left to check.
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)

namespace c10 {
namespace cuda {
inline c10::DeviceIndex current_device() {
  return static_cast<c10::DeviceIndex>(cuda_emu::current_device());
}
// The emulated device is the CPU: a guard accepts CPU tensors' devices and does nothing.
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};
struct OptionalCUDAGuard {
  explicit OptionalCUDAGuard(std::optional<c10::Device>) {}
};
// Launches run in order on the calling thread; every stream is the same (null) stream.
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) {
  return {};
}
}  // namespace cuda
}  // namespace c10

// ---- Thread indices and warp operations ------------------------------------------------------
namespace cuda_emu {

// The launch geometry and the calling fiber's position in it.
struct Position {
  uint3 thread;
  uint3 block;
  dim3 block_dim;
  dim3 grid_dim;
};
extern thread_local const Position* current;
// The running kernel's signature, taken from the first built-in index it reads (every kernel
// reads one before it calls anything that can fail), so that errors name the kernel itself.
extern thread_local const char* kernel_name;
inline const Position& position(const char* function) {
  if (kernel_name == nullptr) kernel_name = function;
  return *current;
}

enum class WarpOpKind : int { ShflIdx, ShflUp, ShflDown, ShflXor, All, Any, Ballot, SyncWarp };

// One lane's part in a warp operation; the scheduler fills in result once every lane named
// in mask has arrived at the same call.
struct WarpRequest {
  WarpOpKind kind;
  unsigned mask;
  uint64_t value;  // the lane's operand, bit-copied (at most 8 bytes)
  int arg;         // shuffle lane / delta / xor mask, or the vote predicate
  int width;
  const char* file;
  int line;
  uint64_t result;
};
uint64_t warp_op(WarpRequest request);
void syncthreads(const char* file, int line);
[[noreturn]] void device_assert_failed(const char* condition, const char* file, int line);
// Block-shared storage for the declaration at `site` (one per declaration and template
// instantiation): the same bytes for every thread of the block, poisoned at block start.
void* shared_array(const void* site, size_t bytes, size_t alignment);

template <typename T>
T shuffle(WarpOpKind kind, unsigned mask, T value, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move 1 to 8 bytes per lane");
  WarpRequest r{kind, mask, 0, arg, width, file, line, 0};
  std::memcpy(&r.value, &value, sizeof(T));
  const uint64_t bits = warp_op(r);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::position(__PRETTY_FUNCTION__).thread)
#define blockIdx (::cuda_emu::position(__PRETTY_FUNCTION__).block)
#define blockDim (::cuda_emu::position(__PRETTY_FUNCTION__).block_dim)
#define gridDim (::cuda_emu::position(__PRETTY_FUNCTION__).grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cuda_emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cuda_emu::warp_op({cuda_emu::WarpOpKind::SyncWarp, mask, 0, 0, 32, file, line, 0});
}
template <typename T>
T __shfl_sync(
    unsigned mask, T v, int lane, int width = 32, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return cuda_emu::shuffle(cuda_emu::WarpOpKind::ShflIdx, mask, v, lane, width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask,
                 T v,
                 unsigned delta,
                 int width = 32,
                 const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return cuda_emu::shuffle(cuda_emu::WarpOpKind::ShflUp, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask,
                   T v,
                   unsigned delta,
                   int width = 32,
                   const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return cuda_emu::shuffle(cuda_emu::WarpOpKind::ShflDown, mask, v, static_cast<int>(delta), width, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask,
                  T v,
                  int lane_mask,
                  int width = 32,
                  const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return cuda_emu::shuffle(cuda_emu::WarpOpKind::ShflXor, mask, v, lane_mask, width, file, line);
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(cuda_emu::warp_op({cuda_emu::WarpOpKind::All, mask, 0, pred != 0, 32, file, line, 0}));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(cuda_emu::warp_op({cuda_emu::WarpOpKind::Any, mask, 0, pred != 0, 32, file, line, 0}));
}
inline unsigned __ballot_sync(unsigned mask,
                              int pred,
                              const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return static_cast<unsigned>(
      cuda_emu::warp_op({cuda_emu::WarpOpKind::Ballot, mask, 0, pred != 0, 32, file, line, 0}));
}
template <typename T>
T __ldg(const T* p) {
  return *p;
}

#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) \
  if (C10_UNLIKELY(!(cond))) ::cuda_emu::device_assert_failed(#cond, __FILE__, __LINE__)

#define FOCAL_LOSS_EXT_SHARED_ARRAY(type, name, size) \
  static const char name##_site = 0;                  \
  type* const name = static_cast<type*>(::cuda_emu::shared_array(&name##_site, sizeof(type) * (size), alignof(type)))

// ---- Launches --------------------------------------------------------------------------------
namespace cuda_emu {

struct LaunchSite {
  const char* kernel;    // the launch expression's kernel, as written
  const char* launcher;  // the enclosing host function, with its template arguments
  const char* file;
  int line;
};

// Runs body(args) once per thread of the grid; throws c10::Error on a launch error.
void run_grid(const LaunchSite& site, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*), void* args);

template <typename Body>
class Launch {
 public:
  Launch(LaunchSite site, dim3 grid, dim3 block, size_t shared_bytes, Body body)
      : site_(site), grid_(grid), block_(block), shared_bytes_(shared_bytes), body_(body) {}
  Launch(LaunchSite site, int64_t grid, dim3 block, size_t shared_bytes, Body body)
      : Launch(site, dim3(checked_grid(site, grid)), block, shared_bytes, body) {}
  Launch(LaunchSite site, int grid, dim3 block, size_t shared_bytes, Body body)
      : Launch(site, static_cast<int64_t>(grid), block, shared_bytes, body) {}

  // Kernel arguments are copied once, as a launch does, and each thread calls the kernel with them.
  template <typename... Args>
  void operator()(Args... args) {
    struct Frame {
      Body* body;
      std::tuple<Args...> args;
    } frame{&body_, std::tuple<Args...>(args...)};
    run_grid(
        site_, grid_, block_, shared_bytes_,
        [](void* f) { std::apply(*static_cast<Frame*>(f)->body, static_cast<Frame*>(f)->args); }, &frame);
  }

 private:
  static unsigned checked_grid(const LaunchSite& site, int64_t grid) {
    TORCH_CHECK(grid >= 1 && grid <= 2147483647, "emulated CUDA launch of ", site.kernel, " at ", site.file, ":",
                site.line, ": grid size ", grid, " is outside [1, 2^31 - 1]");
    return static_cast<unsigned>(grid);
  }
  LaunchSite site_;
  dim3 grid_;
  dim3 block_;
  size_t shared_bytes_;
  Body body_;
};

}  // namespace cuda_emu

#define FOCAL_LOSS_EXT_LAUNCH(kernel, grid, block, shared_bytes, stream)                                    \
  ::cuda_emu::Launch(::cuda_emu::LaunchSite{#kernel, __PRETTY_FUNCTION__, __FILE__, __LINE__}, grid, block, \
                     shared_bytes, [=](auto... kernel_args) { kernel(kernel_args...); })

// ---- Registration: the kernels' operators become the CPU kernels -----------------------------
namespace cuda_emu {

// Marks the dynamic extent of an emulated operator: the tensors it allocates are poisoned.
struct PoisonNewAllocations {
  PoisonNewAllocations();
  ~PoisonNewAllocations();
};

// Stands in for torch::Library inside TORCH_LIBRARY_IMPL: registers each function for the CPU,
// wrapped so that its allocations are poisoned.
class Registrar {
 public:
  explicit Registrar(torch::Library& library) : library_(library) {}
  template <typename R, typename... A>
  Registrar& impl(const char* name, R (*fn)(A...)) {
    library_.impl(name, [fn](A... a) -> R {
      const PoisonNewAllocations poison;
      return fn(std::forward<A>(a)...);
    });
    return *this;
  }

 private:
  torch::Library& library_;
};

}  // namespace cuda_emu

#undef TORCH_LIBRARY_IMPL
#define TORCH_LIBRARY_IMPL(ns, k, m)                                       \
  static void cuda_emu_register_##ns(::cuda_emu::Registrar&);              \
  static const torch::detail::TorchLibraryInit cuda_emu_library_init_##ns( \
      torch::Library::IMPL,                                                \
      [](torch::Library& library) {                                        \
        ::cuda_emu::Registrar registrar(library);                          \
        cuda_emu_register_##ns(registrar);                                 \
      },                                                                   \
      #ns, std::make_optional(c10::DispatchKey::CPU), __FILE__, __LINE__); \
  static void cuda_emu_register_##ns(::cuda_emu::Registrar& m)

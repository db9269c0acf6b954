// CUDA backend of scale_grad_, the backward of every focal-loss operator: grad_input *=
// grad_output * grad_scale in place (problem.h defines grad_scale).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include "../problem.h"
#include "cuda_helpers.cuh"

namespace focal_loss_ext {
namespace cuda {
namespace {

// grad *= grad_output * grad_scale, both read on the device; every block returns at once
// when the product is exactly 1, so plain loss.backward() costs one launch and no traffic.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) scale_grad_kernel(scalar_t* __restrict__ grad,
                                                              const scalar_t* __restrict__ grad_output,
                                                              const at::opmath_type<scalar_t>* __restrict__ grad_scale,
                                                              int64_t numel) {
  using opmath_t = at::opmath_type<scalar_t>;
  using VecT = Pack<scalar_t, kVec>;
  const opmath_t factor = static_cast<opmath_t>(*grad_output) * *grad_scale;
  if (factor == opmath_t(1)) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = numel / kVec;
  for (int64_t i = first; i < packs; i += stride) {
    VecT v = *reinterpret_cast<VecT*>(grad + i * kVec);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v.v[j] = static_cast<scalar_t>(static_cast<opmath_t>(v.v[j]) * factor);
    *reinterpret_cast<VecT*>(grad + i * kVec) = v;
  }
  for (int64_t i = packs * kVec + first; i < numel; i += stride) {
    grad[i] = static_cast<scalar_t>(static_cast<opmath_t>(grad[i]) * factor);
  }
}

void scale_grad_cuda_(at::Tensor grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  const c10::cuda::CUDAGuard device_guard(grad_input.device());
  if (!check_scale_grad_args(grad_input, grad_output, grad_scale)) {
    scale_grad_elementwise_(grad_input, grad_output, grad_scale);
    return;
  }
  if (grad_input.numel() == 0) return;
  const at::Tensor go = grad_output.to(grad_input.scalar_type());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_input.scalar_type(), "scale_grad_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    constexpr int kVecMax = kAccessBytes / sizeof(scalar_t);
    const auto kernel =
        aligned(grad_input.const_data_ptr()) ? scale_grad_kernel<scalar_t, kVecMax> : scale_grad_kernel<scalar_t, 1>;
    static const int blocks_per_sm = resident_blocks_per_sm(scale_grad_kernel<scalar_t, kVecMax>);
    const int64_t grid = grid_for(grad_input.numel() / kVecMax + 1, grad_input.get_device(), blocks_per_sm);
    FOCAL_LOSS_EXT_LAUNCH(kernel, grid, kThreads, 0, stream)(grad_input.mutable_data_ptr<scalar_t>(),
                                                             go.const_data_ptr<scalar_t>(),
                                                             grad_scale.const_data_ptr<opmath_t>(), grad_input.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(focal_loss_ext, CUDA, m) {
  m.impl("scale_grad_", &cuda::scale_grad_cuda_);
}

}  // namespace focal_loss_ext

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

// grad *= grad_output * grad_scale, both read on the device in opmath (a float32 grad_output,
// as autocast's float32 loss gives, is not rounded to a half dtype first); every block returns
// at once when the product is exactly 1, so plain loss.backward() costs one launch and no traffic.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) scale_grad_kernel(scalar_t* __restrict__ grad,
                                                              const at::opmath_type<scalar_t>* __restrict__ grad_output,
                                                              const at::opmath_type<scalar_t>* __restrict__ grad_scale,
                                                              int64_t numel) {
  using opmath_t = at::opmath_type<scalar_t>;
  using VecT = Pack<scalar_t, kVec>;
  const opmath_t factor = *grad_output * *grad_scale;
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

template <typename scalar_t, int kVec>
void launch_scale_grad(at::Tensor& grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr auto kKernel = scale_grad_kernel<scalar_t, kVec>;
  const int64_t grid = grid_for<kKernel>((grad_input.numel() / kVec + kThreads - 1) / kThreads);
  FOCAL_LOSS_EXT_LAUNCH(kKernel, grid, kThreads, 0, c10::cuda::getCurrentCUDAStream())(
      grad_input.mutable_data_ptr<scalar_t>(), grad_output.const_data_ptr<opmath_t>(),
      grad_scale.const_data_ptr<opmath_t>(), grad_input.numel());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void scale_grad_cuda_(at::Tensor grad_input, const at::Tensor& grad_output, const at::Tensor& grad_scale) {
  const c10::cuda::CUDAGuard device_guard(grad_input.device());
  if (!check_scale_grad_args(grad_input, grad_output, grad_scale)) {
    scale_grad_elementwise_(grad_input, grad_output, grad_scale);
    return;
  }
  if (grad_input.numel() == 0) return;
  // grad_scale's dtype is the opmath type; a no-op when grad_output already is.
  const at::Tensor go = grad_output.to(grad_scale.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_input.scalar_type(), "scale_grad_cuda", [&] {
    if (aligned(grad_input.const_data_ptr())) {
      launch_scale_grad<scalar_t, kPackElems<scalar_t>>(grad_input, go, grad_scale);
    } else {
      launch_scale_grad<scalar_t, 1>(grad_input, go, grad_scale);
    }
  });
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(focal_loss_ext, CUDA, m) {
  m.impl("scale_grad_", &cuda::scale_grad_cuda_);
}

}  // namespace focal_loss_ext

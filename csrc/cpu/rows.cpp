// The CPU block runner that every loss shares, and the choice of instruction set.
//
// Blocks: fixed-size blocks of rows run in parallel; their partial sums are combined in block
// order, so the loss is the same for any thread count and any run.
//
// Instruction set: the row loops are built three times (rows_<isa>.cpp, see setup.py) and one
// build serves the process, chosen on first use: FOCAL_LOSS_EXT_CPU_ISA=portable|avx2|avx512
// if set (an error if the name is unknown or the CPU lacks that ISA), else the widest the CPU
// has, capped by ATEN_CPU_CAPABILITY when that is set, as PyTorch's own kernels are.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>

#include "../problem.h"
#include "rows.h"

namespace focal_loss_ext {
namespace cpu {
namespace {

// Elements per block: small enough that the float lanes of a block sum over at most a few
// hundred terms each (error ~1e-6 relative), large enough to amortise the task overhead.
constexpr int64_t kElementsPerBlock = 4096;

constexpr const char* kIsaNames[] = {"portable", "avx2", "avx512"};
constexpr const char* kIsaEnv = "FOCAL_LOSS_EXT_CPU_ISA";

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::Portable:
      return true;
#if defined(FOCAL_LOSS_EXT_X86_ISAS)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return cpu_has(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    default:
      return false;
  }
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text;
}

std::string supported_list() {
  std::string names;
  for (int i = 0; i < 3; ++i) {
    if (cpu_has(static_cast<Isa>(i))) names += std::string(names.empty() ? "" : ", ") + kIsaNames[i];
  }
  return names;
}

// The ISA a name asks for; `what` names the setting in the error message.
Isa parse_isa(const std::string& name, const char* what) {
  for (int i = 0; i < 3; ++i) {
    if (lower(name) == kIsaNames[i]) {
      const Isa isa = static_cast<Isa>(i);
      TORCH_CHECK(cpu_has(isa), what, "=", name, ": this CPU (or this build) lacks that instruction set; it supports ",
                  supported_list());
      return isa;
    }
  }
  TORCH_CHECK(false, what, "=", name, " is not an instruction set; expected one of portable, avx2, avx512");
}

Isa default_isa() {
  if (const char* env = std::getenv(kIsaEnv); env != nullptr && *env != 0) return parse_isa(env, kIsaEnv);
  Isa best = Isa::Portable;
  for (int i = 1; i < 3; ++i) {
    if (cpu_has(static_cast<Isa>(i))) best = static_cast<Isa>(i);
  }
  if (const char* aten = std::getenv("ATEN_CPU_CAPABILITY"); aten != nullptr) {
    const std::string cap = lower(aten);
    if (cap == "default") return Isa::Portable;
    if (cap == "avx2") return std::min(best, Isa::Avx2);
  }
  return best;
}

// -1 until the first call chooses; set again only by the test hook _set_cpu_isa.
std::atomic<int> g_isa{-1};

Isa current_isa() {
  int isa = g_isa.load(std::memory_order_acquire);
  if (isa < 0) {
    static const int chosen = static_cast<int>(default_isa());  // throws (and retries) on a bad setting
    int expected = -1;
    g_isa.compare_exchange_strong(expected, chosen);
    isa = g_isa.load(std::memory_order_acquire);
  }
  return static_cast<Isa>(isa);
}

const RowKernels& kernels_of(Isa isa) {
  switch (isa) {
#if defined(FOCAL_LOSS_EXT_X86_ISAS)
    case Isa::Avx512:
      return AVX512::kRowKernels;
    case Isa::Avx2:
      return AVX2::kRowKernels;
#endif
    default:
      return DEFAULT::kRowKernels;
  }
}

// Operators for `python -m focal_loss_ext.env` and the tests.
std::string cpu_isa_op() {
  return kIsaNames[static_cast<int>(current_isa())];
}

std::vector<std::string> cpu_isas_supported_op() {
  std::vector<std::string> names;
  for (int i = 0; i < 3; ++i) {
    if (cpu_has(static_cast<Isa>(i))) names.emplace_back(kIsaNames[i]);
  }
  return names;
}

// Switches the build in use (tests run every path in one process); returns the previous one.
std::string set_cpu_isa_op(const std::string& name) {
  const std::string previous = cpu_isa_op();
  g_isa.store(static_cast<int>(parse_isa(name, "isa")), std::memory_order_release);
  return previous;
}

at::Tensor cpu_vec_math_op(const at::Tensor& x, const std::string& fn) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "x: expected a float32 CPU tensor, got ",
              x.scalar_type(), " on ", x.device());
  TORCH_CHECK(fn == "exp" || fn == "log1p_unit", "fn: expected \"exp\" or \"log1p_unit\", got \"", fn, "\"");
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  row_kernels().vec_math(fn == "exp" ? VecMathFn::Exp : VecMathFn::Log1pUnit, in.const_data_ptr<float>(),
                         out.mutable_data_ptr<float>(), in.numel());
  return out;
}

}  // namespace

const RowKernels& row_kernels() {
  return kernels_of(current_isa());
}

void run_rows(FocalLossProblem& p, RowsFn rows_fn) {
  // On the CPU the normalizer can be read without a device round trip.
  double loss_scale = p.host_scale;
  if (p.normalizer.defined()) loss_scale /= p.normalizer.item<double>();

  RowsPlan plan;
  plan.dtype = p.inputs.scalar_type();
  plan.gamma_kind = gamma_kind(p.gamma);
  plan.star = p.kind == LossKind::SigmoidFocalStar;
  plan.inputs = p.inputs.const_data_ptr();
  plan.targets = p.labels ? nullptr : p.targets.const_data_ptr();
  plan.labels = p.labels ? p.targets.const_data_ptr<int64_t>() : nullptr;
  plan.alpha = p.alpha.defined() ? p.alpha.const_data_ptr() : nullptr;
  plan.weight = p.weight.defined() ? p.weight.const_data_ptr() : nullptr;
  plan.alpha_pos = p.alpha_pos;
  plan.alpha_neg = p.alpha_neg;
  plan.gamma = p.gamma;
  plan.beta = p.beta;
  plan.smoothing = p.smoothing;
  plan.loss_scale = loss_scale;
  plan.grad_prescale = p.prescale_grad ? loss_scale : 1.0;
  plan.classes = p.classes;
  plan.ignore_index = p.ignore_index;
  plan.loss_out = p.reduction == Reduction::None ? p.loss.mutable_data_ptr() : nullptr;
  plan.opmath_loss = p.opmath_loss;
  plan.grad_out = p.compute_grad ? p.grad_input.mutable_data_ptr() : nullptr;

  const int64_t rows_per_block = std::max<int64_t>(1, kElementsPerBlock / std::max<int64_t>(p.classes, 1));
  const int64_t blocks = p.classes == 0 ? 0 : (p.rows + rows_per_block - 1) / rows_per_block;
  std::vector<RowsResult> partials(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      partials[b] = rows_fn(plan, b * rows_per_block, std::min(p.rows, (b + 1) * rows_per_block));
    }
  });

  double total = 0;
  int64_t count = 0;
  for (const RowsResult& r : partials) {
    if (p.kind == LossKind::SoftmaxFocal) {
      TORCH_CHECK(!r.bad_label, "targets: label ", r.first_bad_label, " is out of range; expected a class in [0, ",
                  p.classes, ") or ignore_index (", p.ignore_index, ")");
    } else {
      TORCH_CHECK(!r.bad_label, "targets: label ", r.first_bad_label, " is out of range; expected a class in [0, ",
                  p.classes, "), ", p.classes, " (background) or ignore_index (", p.ignore_index, ")");
    }
    total += r.loss_sum;
    count += r.count;
  }
  double grad_scale = p.prescale_grad ? 1.0 : loss_scale;
  if (p.divide_by_count) {
    total /= static_cast<double>(count);  // NaN when every row is ignored, as for an empty mean
    grad_scale = count > 0 ? grad_scale / static_cast<double>(count) : 0.0;
  }
  if (p.reduction != Reduction::None) p.loss.fill_(total * loss_scale);
  p.grad_scale.fill_(grad_scale);
}

}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(focal_loss_ext, m) {
  m.def("_cpu_isa() -> str", &cpu::cpu_isa_op);
  m.def("_cpu_isas_supported() -> str[]", &cpu::cpu_isas_supported_op);
  m.def("_set_cpu_isa(str isa) -> str", &cpu::set_cpu_isa_op);
  m.def("_cpu_vec_math(Tensor x, str fn) -> Tensor", &cpu::cpu_vec_math_op);
}

}  // namespace focal_loss_ext

// The operator schemas, declared once for every backend, and the Python module
// focal_loss_ext._C. Importing the module loads this library, whose static initializers
// register the schemas here and the kernels in cpu/ and cuda/ (TORCH_LIBRARY_IMPL); the module
// itself only carries build facts for `python -m focal_loss_ext.env`.
#include <Python.h>
#include <torch/library.h>

#ifndef FOCAL_LOSS_EXT_CUDA_ARCHS
#define FOCAL_LOSS_EXT_CUDA_ARCHS ""
#endif

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "focal_loss_ext kernels", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef FOCAL_LOSS_EXT_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
#ifdef FOCAL_LOSS_EXT_EMULATED_CUDA
  const int emulated_cuda = 1;  // the CUDA kernels, built for the CPU against csrc/emu
#else
  const int emulated_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0 ||
      PyModule_AddIntConstant(module, "emulated_cuda", emulated_cuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", FOCAL_LOSS_EXT_CUDA_ARCHS) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

namespace focal_loss_ext {

TORCH_LIBRARY(focal_loss_ext, m) {
  // Loss and d loss / d inputs in one pass; the scaling words (host_scale, normalizer,
  // grad_scale) are defined in problem.h. reduction: 0 none, 1 mean, 2 sum, plus kOpmathLoss (4)
  // for the loss in opmath (float32 for float16/bfloat16 inputs; the autocast kernels in
  // autocast.cpp add it); alpha < 0 disables the alpha weighting.
  m.def(
      "sigmoid_focal_loss(Tensor inputs, Tensor targets, Tensor? alpha_per_class, Tensor? weight, "
      "Tensor? normalizer, float alpha, float gamma, float host_scale, float label_smoothing, "
      "int ignore_index, int reduction, bool compute_grad) -> (Tensor loss, Tensor grad_input, "
      "Tensor grad_scale)");
  // FL* (Lin et al., 2017, appendix): as sigmoid_focal_loss, with the shift beta; gamma > 0.
  m.def(
      "sigmoid_focal_loss_star(Tensor inputs, Tensor targets, Tensor? alpha_per_class, Tensor? weight, "
      "Tensor? normalizer, float alpha, float gamma, float beta, float host_scale, float label_smoothing, "
      "int ignore_index, int reduction, bool compute_grad) -> (Tensor loss, Tensor grad_input, "
      "Tensor grad_scale)");
  // Softmax focal loss over the last dimension; one loss per row. targets: class indices
  // (ignore_index skipped) or class probabilities; alpha_per_class: optional (C); weight:
  // optional per row.
  m.def(
      "softmax_focal_loss(Tensor inputs, Tensor targets, Tensor? alpha_per_class, Tensor? weight, "
      "Tensor? normalizer, float gamma, float host_scale, float label_smoothing, int ignore_index, int reduction, "
      "bool compute_grad) -> (Tensor loss, Tensor grad_input, Tensor grad_scale)");
  // grad_input *= grad_output * grad_scale, in place. With a 0-dim grad_output the product is
  // read on the device and, when it is exactly 1, no element is touched.
  m.def("scale_grad_(Tensor(a!) grad_input, Tensor grad_output, Tensor grad_scale) -> ()");
}

}  // namespace focal_loss_ext

// The Python module focal_loss_ext._C. Importing it loads this library, whose static
// initializers register the operators (TORCH_LIBRARY / TORCH_LIBRARY_IMPL); the module itself
// only carries build facts for `python -m focal_loss_ext.env`.
#include <Python.h>

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

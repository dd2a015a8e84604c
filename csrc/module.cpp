// mf_kernels._C: a bare extension module. Importing it runs the static TORCH_LIBRARY
// registrations of every file linked into it; it exposes no Python functions of its own.
#include <Python.h>

// PyMODINIT_FUNC exports the symbol despite -fvisibility=hidden.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "mf_kernels operators (registered with torch.library)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}

// Registers the dense-CRF operators (namespace lightning_deeplab; schemas.h says what each
// computes). The CPU kernels live in cpu/, the CUDA ones in cuda/; both implement these schemas.
#include <Python.h>
#include <torch/library.h>

#include "cpu/buffer_pool.h"
#include "schemas.h"

// `import lightning_deeplab._C` loads this library, which registers the operators with
// torch.ops as a side effect; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(lightning_deeplab, m) {
  namespace schema = lightning_deeplab::schema;
  m.def(schema::kBuildLattice);
  m.def(schema::kLatticeFilter);
  m.def(schema::kPottsMeanField);
  m.def(schema::kReleaseCachedBuffers,
        [] { return lightning_deeplab::BufferPool::instance().release_all(); });
}

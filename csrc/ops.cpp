// The kga_fast operator library: schemas only. Kernels register per device in
// csrc/kl_cpu.cpp (CPU) and csrc/cuda/kl_cuda.cu (CUDA); kga_fast/ops.py adds the fake
// (meta) kernels for torch.compile and the autograd formulas.
//
// Design: the forward ops read each logit row once (twice for the JSD) and save only
// per-row statistics (see kga.h); the backward ops recompute softmax from those in one
// pass and write d(loss)/d(logits) already scaled by the incoming gradient. Against
// computing the gradient in the forward, this moves the same bytes (the inputs are read
// twice instead of a saved gradient being written, read and rewritten), keeps no (N, C)
// activation alive, costs nothing when no gradient is needed, and computes only the
// gradients asked for (a frozen teacher gets none).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import kga_fast._C` loads this shared object, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(kga_fast, m) {
  // KL(softmax(p) || softmax(q)) per row -> (out (N,), stats (N, 4)).
  m.def("kl_rows(Tensor p, Tensor q) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  // grad_out (N,) times d out_i / d p_i and d out_i / d q_i; an empty tensor for a
  // gradient not asked for.
  m.def(
      "kl_rows_backward(Tensor grad_out, Tensor p, Tensor q, Tensor out, Tensor stats, "
      "bool grad_p, bool grad_q) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // Jensen-Shannon divergence per row -> (out (N,), stats (N, 6)).
  m.def("jsd_rows(Tensor p, Tensor q) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def(
      "jsd_rows_backward(Tensor grad_out, Tensor p, Tensor q, Tensor stats, "
      "bool grad_p, bool grad_q) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

// The mf_kernels operator library: every schema, in one place.
//
// Kernels live one op per file per backend: csrc/cpu/<op>.cpp (CPU dispatch key) and
// csrc/cuda/<op>.cu (CUDA dispatch key). Fake (meta) implementations and autograd are
// registered from Python (mf_kernels/ops/<op>.py). Backward ops take only what they need:
// dynamic_relu and f2m_attention recompute everything from their inputs; m2f_attention takes
// its forward output (for the softmax-gradient row sums) and recomputes the softmax statistics.
#include <torch/library.h>

TORCH_LIBRARY(mf_kernels, m) {
  // y[b,c,h,w] = max_k (slope[b,c,k] * x[b,c,h,w] + intercept[b,c,k])
  m.def("dynamic_relu(Tensor x, Tensor slope, Tensor? intercept) -> Tensor");
  // Returns (grad_x, grad_slope, grad_intercept); grad_intercept is computed even when the
  // forward had no intercept (it costs nothing extra) and is then ignored.
  m.def(
      "dynamic_relu_backward(Tensor grad_y, Tensor x, Tensor slope, Tensor? intercept)"
      " -> (Tensor, Tensor, Tensor)");

  // out[b,m,hc] = sum_p softmax_p(s <q[b,m,hc], x[b,hc,p]>) x[b,hc,p], s = (C/heads)^-1/2
  m.def("m2f_attention(Tensor x, Tensor q, int heads) -> Tensor");
  // Returns (grad_x, grad_q).
  m.def(
      "m2f_attention_backward(Tensor grad_out, Tensor x, Tensor q, Tensor out, int heads)"
      " -> (Tensor, Tensor)");

  // y[b,hc,p] = x[b,hc,p] + sum_m softmax_m(s <x[b,hc,p], k[b,m,hc]>) v[b,m,hc]
  m.def("f2m_attention(Tensor x, Tensor k, Tensor v, int heads) -> Tensor");
  // Returns (grad_x, grad_k, grad_v).
  m.def(
      "f2m_attention_backward(Tensor grad_y, Tensor x, Tensor k, Tensor v, int heads)"
      " -> (Tensor, Tensor, Tensor)");
}

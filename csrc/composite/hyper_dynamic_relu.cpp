// dynamic_relu_slopes and hyper_dynamic_relu: the authors' dynamic ReLU module in one call
// (spec section 7).
//
//   theta = h-sigmoid(W2 ReLU(W1 t + b1) + b2)       t = token 0, [B, d]
//   a1 = 2 (theta[:, :C] - 0.5) + 1,  a2 = 2 (theta[:, C:] - 0.5);  slope = stack(a1, a2) [B, C, 2]
//   y = dynamic_relu(x, slope) = max(a1 x, a2 x)
#include <torch/library.h>

#include "modules.h"

namespace mf_kernels {

at::Tensor dynamic_relu_slopes(const at::Tensor& token, const at::Tensor& w1, const at::Tensor& b1,
                               const at::Tensor& w2, const at::Tensor& b2) {
  const at::Tensor theta = at::hardsigmoid(at::linear(at::relu(at::linear(token, w1, b1)), w2, b2));
  const int64_t C = theta.size(-1) / 2;
  const at::Tensor a1 = (theta.narrow(-1, 0, C) - 0.5) * 2.0 + 1.0;
  const at::Tensor a2 = (theta.narrow(-1, C, C) - 0.5) * 2.0;
  return at::stack({a1, a2}, -1);
}

at::Tensor hyper_dynamic_relu(const at::Tensor& x, const at::Tensor& token, const at::Tensor& w1,
                              const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
  return call_dynamic_relu(x, dynamic_relu_slopes(token, w1, b1, w2, b2));
}

TORCH_LIBRARY_IMPL(mf_kernels, CompositeImplicitAutograd, m) {
  m.impl("dynamic_relu_slopes", &dynamic_relu_slopes);
  m.impl("hyper_dynamic_relu", &hyper_dynamic_relu);
}

}  // namespace mf_kernels

// mobile2former: the whole Mobile->Former bridge module in one call (spec section 8).
//
//   Q = q(Z);  O = m2f_attention(x, Q, heads);  O <- O * (2 h-sigmoid(gate(Z)))
//   Z <- LayerNorm(Z + proj(O))
#include <torch/library.h>

#include "modules.h"

namespace mf_kernels {

at::Tensor mobile2former(const at::Tensor& x, const at::Tensor& z, const at::Tensor& q_weight,
                         const at::Tensor& q_bias, const at::Tensor& gate_weight,
                         const at::Tensor& gate_bias, const at::Tensor& proj_weight,
                         const at::Tensor& proj_bias, const at::Tensor& norm_weight,
                         const at::Tensor& norm_bias, int64_t heads) {
  at::Tensor out = call_m2f_attention(x, at::linear(z, q_weight, q_bias), heads);
  out = out * (at::hardsigmoid(at::linear(z, gate_weight, gate_bias)) * 2.0);  // gate reads input Z
  return layer_norm(z + at::linear(out, proj_weight, proj_bias), norm_weight, norm_bias);
}

TORCH_LIBRARY_IMPL(mf_kernels, CompositeImplicitAutograd, m) {
  m.impl("mobile2former", &mobile2former);
}

}  // namespace mf_kernels

// former2mobile: the whole Former->Mobile bridge module in one call (spec section 10).
//
//   y = f2m_attention(x, k(Z), v(Z), heads)   (the residual x + ... is inside the op)
#include <torch/library.h>

#include "modules.h"

namespace mf_kernels {

at::Tensor former2mobile(const at::Tensor& x, const at::Tensor& z, const at::Tensor& k_weight,
                         const at::Tensor& k_bias, const at::Tensor& v_weight,
                         const at::Tensor& v_bias, int64_t heads) {
  return call_f2m_attention(x, at::linear(z, k_weight, k_bias), at::linear(z, v_weight, v_bias),
                            heads);
}

TORCH_LIBRARY_IMPL(mf_kernels, CompositeImplicitAutograd, m) {
  m.impl("former2mobile", &former2mobile);
}

}  // namespace mf_kernels

// former: the token self-attention and FFN in one call (spec section 9).
//
//   A_h = softmax(s Q_h Z_hᵀ), Q = q(Z), keys = values = Z, s = (d/heads)^-1/2
//   Z <- LN1(Z + out(concat_h A_h Z_h));  Z <- LN2(Z + ffn2(GELU(ffn1(Z))))
#include <torch/library.h>

#include <cmath>

#include "modules.h"

namespace mf_kernels {

at::Tensor former(const at::Tensor& z, const at::Tensor& q_weight, const at::Tensor& q_bias,
                  const at::Tensor& out_weight, const at::Tensor& out_bias,
                  const at::Tensor& norm1_weight, const at::Tensor& norm1_bias,
                  const at::Tensor& ffn1_weight, const at::Tensor& ffn1_bias,
                  const at::Tensor& ffn2_weight, const at::Tensor& ffn2_bias,
                  const at::Tensor& norm2_weight, const at::Tensor& norm2_bias, int64_t heads) {
  TORCH_CHECK_VALUE(z.dim() == 3, "z: expected a 3-D tensor [B, M, d], got shape ", z.sizes());
  const int64_t B = z.size(0), M = z.size(1), d = z.size(2);
  TORCH_CHECK_VALUE(heads > 0 && d % heads == 0, "heads: expected a positive divisor of d=", d,
                    ", got ", heads);
  const int64_t ch = d / heads;
  const at::Tensor q = at::linear(z, q_weight, q_bias).reshape({B, M, heads, ch}).transpose(1, 2);
  const at::Tensor kv = z.reshape({B, M, heads, ch}).transpose(1, 2);
  const at::Tensor attn = softmax_fp32(at::matmul(q, kv.transpose(-1, -2)) * std::pow(ch, -0.5), -1);
  const at::Tensor mixed = at::matmul(attn, kv).transpose(1, 2).reshape({B, M, d});
  at::Tensor y = layer_norm(z + at::linear(mixed, out_weight, out_bias), norm1_weight, norm1_bias);
  const at::Tensor ffn =
      at::linear(at::gelu(at::linear(y, ffn1_weight, ffn1_bias)), ffn2_weight, ffn2_bias);
  return layer_norm(y + ffn, norm2_weight, norm2_bias);
}

TORCH_LIBRARY_IMPL(mf_kernels, CompositeImplicitAutograd, m) { m.impl("former", &former); }

}  // namespace mf_kernels

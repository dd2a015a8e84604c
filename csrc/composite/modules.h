// The module-level composite ops, callable from each other (block_tokens composes them).
// Weights are in nn.Linear / nn.LayerNorm layout; see csrc/library.cpp for the schemas.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common.h"

namespace mf_kernels {

at::Tensor mobile2former(const at::Tensor& x, const at::Tensor& z, const at::Tensor& q_weight,
                         const at::Tensor& q_bias, const at::Tensor& gate_weight,
                         const at::Tensor& gate_bias, const at::Tensor& proj_weight,
                         const at::Tensor& proj_bias, const at::Tensor& norm_weight,
                         const at::Tensor& norm_bias, int64_t heads);

at::Tensor former(const at::Tensor& z, const at::Tensor& q_weight, const at::Tensor& q_bias,
                  const at::Tensor& out_weight, const at::Tensor& out_bias,
                  const at::Tensor& norm1_weight, const at::Tensor& norm1_bias,
                  const at::Tensor& ffn1_weight, const at::Tensor& ffn1_bias,
                  const at::Tensor& ffn2_weight, const at::Tensor& ffn2_bias,
                  const at::Tensor& norm2_weight, const at::Tensor& norm2_bias, int64_t heads);

at::Tensor former2mobile(const at::Tensor& x, const at::Tensor& z, const at::Tensor& k_weight,
                         const at::Tensor& k_bias, const at::Tensor& v_weight,
                         const at::Tensor& v_bias, int64_t heads);

at::Tensor dynamic_relu_slopes(const at::Tensor& token, const at::Tensor& w1, const at::Tensor& b1,
                               const at::Tensor& w2, const at::Tensor& b2);

}  // namespace mf_kernels

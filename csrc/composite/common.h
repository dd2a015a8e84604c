// Helpers for the module-level composite ops (csrc/composite/*.cpp).
//
// A composite op runs a whole reference module (projections, gate, norms, and the fused
// attention core) in one call from Python. It is registered under CompositeImplicitAutograd:
// autograd differentiates the ATen ops it calls, and torch.compile traces through it. Each one
// calls the same ATen ops in the same order as the reference module, so results agree to the
// last bit in fp64.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace mf_kernels {

constexpr double kNormEps = 1e-5;  // every LayerNorm of Mobile-Former (spec section 2)

// Softmax accumulated in fp32 for fp16/bf16 inputs (mobileformer.functional.softmax_fp32).
inline at::Tensor softmax_fp32(const at::Tensor& scores, int64_t dim) {
  const auto dtype = scores.scalar_type();
  if (dtype == at::kHalf || dtype == at::kBFloat16) {
    return at::softmax(scores, dim, at::kFloat).to(dtype);
  }
  return at::softmax(scores, dim);
}

inline at::Tensor layer_norm(const at::Tensor& z, const at::Tensor& weight, const at::Tensor& bias) {
  return at::layer_norm(z, {z.size(-1)}, weight, bias, kNormEps);
}

// The fused attention ops, called through the dispatcher so that their autograd, CPU and CUDA
// kernels apply. Looked up on first use: static initialisation order across files is unknown.
inline at::Tensor call_m2f_attention(const at::Tensor& x, const at::Tensor& q, int64_t heads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mf_kernels::m2f_attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(x, q, heads);
}

inline at::Tensor call_f2m_attention(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                                     int64_t heads) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mf_kernels::f2m_attention", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(x, k, v, heads);
}

inline at::Tensor call_dynamic_relu(const at::Tensor& x, const at::Tensor& slope) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mf_kernels::dynamic_relu", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&)>();
  return op.call(x, slope, c10::nullopt);
}

}  // namespace mf_kernels

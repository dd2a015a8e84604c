// The mf_kernels operator library: every schema, in one place.
//
// Kernels live one op per file per backend: csrc/cpu/<op>.cpp (CPU dispatch key) and
// csrc/cuda/<op>.cu (CUDA dispatch key). Fake (meta) implementations and autograd are
// registered from Python (mf_kernels/ops/<op>.py). Backward ops take only what they need:
// dynamic_relu and f2m_attention recompute everything from their inputs; m2f_attention takes
// its forward output (for the softmax-gradient row sums) and the forward's log-sum-exp.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

TORCH_LIBRARY(mf_kernels, m) {
  // y[b,c,h,w] = max_k (slope[b,c,k] * x[b,c,h,w] + intercept[b,c,k])
  m.def("dynamic_relu(Tensor x, Tensor slope, Tensor? intercept) -> Tensor");
  // Returns (grad_x, grad_slope, grad_intercept); grad_intercept is computed even when the
  // forward had no intercept (it costs nothing extra) and is then ignored.
  m.def(
      "dynamic_relu_backward(Tensor grad_y, Tensor x, Tensor slope, Tensor? intercept)"
      " -> (Tensor, Tensor, Tensor)");

  // out[b,m,hc] = sum_p softmax_p(s <q[b,m,hc], x[b,hc,p]>) x[b,hc,p], s = (C/heads)^-1/2,
  // and the softmax's log-sum-exp lse[b,h,m] = log sum_p exp(s <q[b,m,hc], x[b,hc,p]>)
  // ([B, heads, M], natural log, float32; float64 for float64 inputs; -inf for H*W = 0): the
  // backward takes it instead of recomputing it. Returns (out, lse); lse has no gradient.
  m.def("m2f_attention_with_lse(Tensor x, Tensor q, int heads) -> (Tensor, Tensor)");
  // out alone: m2f_attention_with_lse(x, q, heads)[0] (CompositeImplicitAutograd, below).
  m.def("m2f_attention(Tensor x, Tensor q, int heads) -> Tensor");
  // Returns (grad_x, grad_q).
  m.def(
      "m2f_attention_backward(Tensor grad_out, Tensor x, Tensor q, Tensor out, Tensor lse,"
      " int heads) -> (Tensor, Tensor)");

  // y[b,hc,p] = x[b,hc,p] + sum_m softmax_m(s <x[b,hc,p], k[b,m,hc]>) v[b,m,hc]
  m.def("f2m_attention(Tensor x, Tensor k, Tensor v, int heads) -> Tensor");
  // Returns (grad_x, grad_k, grad_v).
  m.def(
      "f2m_attention_backward(Tensor grad_y, Tensor x, Tensor k, Tensor v, int heads)"
      " -> (Tensor, Tensor, Tensor)");

  // Module-level composites (csrc/composite/): a whole reference module in one call, built
  // from ATen ops and the fused ops above; CompositeImplicitAutograd, so autograd and
  // torch.compile see through them. Weights are in nn.Linear / nn.LayerNorm layout.
  m.def(
      "mobile2former(Tensor x, Tensor z, Tensor q_weight, Tensor q_bias, Tensor gate_weight,"
      " Tensor gate_bias, Tensor proj_weight, Tensor proj_bias, Tensor norm_weight,"
      " Tensor norm_bias, int heads) -> Tensor");
  m.def(
      "former(Tensor z, Tensor q_weight, Tensor q_bias, Tensor out_weight, Tensor out_bias,"
      " Tensor norm1_weight, Tensor norm1_bias, Tensor ffn1_weight, Tensor ffn1_bias,"
      " Tensor ffn2_weight, Tensor ffn2_bias, Tensor norm2_weight, Tensor norm2_bias,"
      " int heads) -> Tensor");
  m.def(
      "former2mobile(Tensor x, Tensor z, Tensor k_weight, Tensor k_bias, Tensor v_weight,"
      " Tensor v_bias, int heads) -> Tensor");
  m.def("dynamic_relu_slopes(Tensor token, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor");
  m.def(
      "hyper_dynamic_relu(Tensor x, Tensor token, Tensor w1, Tensor b1, Tensor w2, Tensor b2)"
      " -> Tensor");
  // All token work of one block (freeze): returns (tokens, slope1, slope2, k, v).
  m.def(
      "block_tokens(Tensor x, Tensor z, Tensor[] weights, int bridge_heads, int former_heads)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The frozen CPU inference path (csrc/cpu/frozen/, used by mf_kernels.freeze): a whole
  // Mobile-Former from images [B, 3, H, W] to logits, fp32, NHWC inside. weights and config
  // are written by mf_kernels/frozen_plan.py. isa: None for the best build this CPU runs, or
  // "baseline" / "avx2" / "avx512" (tests).
  m.def(
      "frozen_mobileformer(Tensor x, Tensor[] weights, int[] config, str? isa=None) -> Tensor");
  // Which instruction-set build of the frozen kernels runs here: "avx512", "avx2", "baseline".
  m.def("cpu_isa() -> str");
  // The frozen path's kernels one at a time, for tests (act: 0 none, 1 ReLU6, 2 dynamic ReLU
  // with slopes [2, N]). frozen_linear: y = act(x W + bias) [+ residual], W packed in
  // 32-column panels, stores through column_map. frozen_depthwise: 3x3, padding 1, x and y
  // [H, W, C], weight [9, C]. frozen_attention: m2f when values is None (out [M, C]), else
  // f2m (y [P, C] = x + update).
  m.def(
      "frozen_linear(Tensor x, Tensor packed, Tensor bias, int act, Tensor? slopes,"
      " Tensor? residual, Tensor? column_map, str? isa=None) -> Tensor");
  m.def(
      "frozen_depthwise(Tensor x, Tensor weight, Tensor bias, int stride, int act,"
      " Tensor? slopes, str? isa=None) -> Tensor");
  m.def(
      "frozen_attention(Tensor x, Tensor tokens, Tensor? values, int heads, str? isa=None)"
      " -> Tensor");
  m.def("frozen_gelu(Tensor x, str? isa=None) -> Tensor");
}

namespace {

// m2f_attention = the output of m2f_attention_with_lse: autograd and torch.compile see the
// latter, whose autograd (mf_kernels/ops/m2f_attention.py) keeps lse for the backward.
at::Tensor m2f_attention_composite(const at::Tensor& x, const at::Tensor& q, int64_t heads) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mf_kernels::m2f_attention_with_lse", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>();
  return std::get<0>(op.call(x, q, heads));
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CompositeImplicitAutograd, m) {
  m.impl("m2f_attention", &m2f_attention_composite);
}

// Argument checks shared by the CPU and CUDA kernels. Messages name the argument and say what
// was expected, so that a user calling torch.ops.mf_kernels.* directly gets the same errors as
// one going through the Python entry points (mf_kernels/ops/_checks.py mirrors these).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

namespace mf_kernels {

inline void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, name, ": expected a ", rank, "-D tensor ", layout, ", got shape ",
              t.sizes());
}

inline void check_same(const at::Tensor& ref, const at::Tensor& t, const char* ref_name,
                       const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected device ", ref.device(), " (that of ",
              ref_name, "), got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ",
              ref.scalar_type(), " (that of ", ref_name, "), got ", t.scalar_type());
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
              ": expected a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              t.scalar_type());
}

inline void check_heads(int64_t heads, int64_t channels, const char* x_name) {
  TORCH_CHECK_VALUE(heads > 0, "heads: expected a positive number of heads, got ", heads);
  TORCH_CHECK_VALUE(channels % heads == 0, "heads: ", x_name, " has ", channels,
              " channels, which is not divisible by heads=", heads);
}

// A [B, M, C] token tensor that must agree with x [B, C, H, W] in B and C.
inline void check_tokens(const at::Tensor& x, const at::Tensor& t, const char* name) {
  check_rank(t, name, 3, "[B, M, C]");
  check_same(x, t, "x", name);
  TORCH_CHECK_VALUE(t.size(0) == x.size(0) && t.size(2) == x.size(1), name,
                    ": expected shape [B, M, C] = [", x.size(0), ", M, ", x.size(1),
                    "] to match x ", x.sizes(), ", got ", t.sizes());
}

// The arguments of each op, checked the same way by every backend.
inline void check_dynamic_relu_args(const at::Tensor& x, const at::Tensor& slope,
                                    const c10::optional<at::Tensor>& intercept) {
  check_rank(x, "x", 4, "[B, C, H, W]");
  check_float(x, "x");
  check_rank(slope, "slope", 3, "[B, C, K]");
  check_same(x, slope, "x", "slope");
  TORCH_CHECK_VALUE(slope.size(0) == x.size(0) && slope.size(1) == x.size(1),
                    "slope: expected shape [B, C, K] = [", x.size(0), ", ", x.size(1),
                    ", K] to match x ", x.sizes(), ", got ", slope.sizes());
  TORCH_CHECK_VALUE(slope.size(2) >= 1, "slope: expected at least one piece (K >= 1), got K = 0");
  if (intercept.has_value()) {
    check_rank(*intercept, "intercept", 3, "[B, C, K]");
    check_same(x, *intercept, "x", "intercept");
    TORCH_CHECK_VALUE(intercept->sizes() == slope.sizes(),
                      "intercept: expected the shape of slope ", slope.sizes(), ", got ",
                      intercept->sizes());
  }
}

inline void check_m2f_attention_args(const at::Tensor& x, const at::Tensor& q, int64_t heads) {
  check_rank(x, "x", 4, "[B, C, H, W]");
  check_float(x, "x");
  check_heads(heads, x.size(1), "x");
  check_tokens(x, q, "q");
}

// The log-sum-exp of m2f_attention's softmax, [B, heads, M], in the accumulation type of x
// (float32 for float32/float16/bfloat16, float64 for float64).
inline at::ScalarType lse_dtype(const at::Tensor& x) { return at::toOpMathType(x.scalar_type()); }

inline void check_m2f_attention_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                                              const at::Tensor& q, const at::Tensor& out,
                                              const at::Tensor& lse, int64_t heads) {
  check_m2f_attention_args(x, q, heads);
  check_rank(grad_out, "grad_out", 3, "[B, M, C]");
  check_same(x, grad_out, "x", "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes(), "grad_out: expected the shape of q ", q.sizes(),
                    ", got ", grad_out.sizes());
  check_rank(out, "out", 3, "[B, M, C]");
  check_same(x, out, "x", "out");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out: expected the shape of q ", q.sizes(), ", got ",
                    out.sizes());
  check_rank(lse, "lse", 3, "[B, heads, M]");
  TORCH_CHECK_VALUE(lse.device() == x.device(), "lse: expected device ", x.device(),
                    " (that of x), got ", lse.device());
  TORCH_CHECK_TYPE(lse.scalar_type() == lse_dtype(x), "lse: expected dtype ", lse_dtype(x),
                   " (the accumulation type of x), got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.size(0) == x.size(0) && lse.size(1) == heads && lse.size(2) == q.size(1),
                    "lse: expected shape [B, heads, M] = [", x.size(0), ", ", heads, ", ",
                    q.size(1), "], got ", lse.sizes());
}

inline void check_f2m_attention_args(const at::Tensor& x, const at::Tensor& k,
                                     const at::Tensor& v, int64_t heads) {
  check_rank(x, "x", 4, "[B, C, H, W]");
  check_float(x, "x");
  check_heads(heads, x.size(1), "x");
  check_tokens(x, k, "k");
  check_tokens(x, v, "v");
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "v: expected the shape of k ", k.sizes(), ", got ",
                    v.sizes());
}

// Output layout rule shared with the fake implementations: channels_last when the input is
// channels_last (and not also plain contiguous), else contiguous NCHW.
inline at::MemoryFormat output_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

}  // namespace mf_kernels

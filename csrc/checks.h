// Argument checks shared by the CPU and CUDA kernels. Messages name the argument and say what
// was expected, so that a user calling torch.ops.mf_kernels.* directly gets the same errors as
// one going through the Python entry points (mf_kernels/ops/_checks.py mirrors these).
#pragma once

#include <ATen/ATen.h>

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

// Output layout rule shared with the fake implementations: channels_last when the input is
// channels_last (and not also plain contiguous), else contiguous NCHW.
inline at::MemoryFormat output_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

}  // namespace mf_kernels

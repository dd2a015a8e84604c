// The frozen path's kernels as ops on tensors, one call per kernel, so that the tests can
// hold each of them (in each instruction-set build: `isa`) against ATen on random inputs.
// mf_kernels.freeze itself calls only frozen_mobileformer.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "kernels.h"

namespace mf_kernels {
namespace frozen {
namespace {

const KernelTable& table(const c10::optional<c10::string_view>& isa) {
  return isa ? kernel_table(std::string(*isa)) : kernel_table();
}

void check_fp32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, ": expected a ", dim, "-D tensor, got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, ": expected float32, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor");
}

Activation activation(int64_t act) {
  TORCH_CHECK_VALUE(act >= 0 && act <= 2, "act: expected 0 (none), 1 (ReLU6) or 2 (dynamic "
                    "ReLU), got ", act);
  return static_cast<Activation>(act);
}

// Fills an epilogue's activation and dynamic-ReLU slopes (slopes [2, N]: a1, a2).
void set_activation(Epilogue& e, int64_t act, const c10::optional<at::Tensor>& slopes,
                    int64_t n, at::Tensor& keep) {
  e.act = activation(act);
  if (e.act != Activation::kDynamicRelu) return;
  TORCH_CHECK_VALUE(slopes.has_value() && slopes->numel() == 2 * n,
                    "slopes: expected [2, ", n, "] for a dynamic ReLU");
  keep = slopes->contiguous();
  check_fp32(keep, "slopes", 2);
  e.slope1 = keep.const_data_ptr<float>();
  e.slope2 = e.slope1 + n;
}

// y [R, N] = epilogue(x [R, K] W + bias): W packed [K, N] (kPanel-column panels).
at::Tensor frozen_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias,
                         int64_t act, const c10::optional<at::Tensor>& slopes,
                         const c10::optional<at::Tensor>& residual,
                         const c10::optional<at::Tensor>& column_map,
                         c10::optional<c10::string_view> isa) {
  check_fp32(x, "x", 2);
  check_fp32(bias, "bias", 1);
  const int64_t R = x.size(0), K = x.size(1), N = bias.size(0);
  const int64_t panels = (N + kPanel - 1) / kPanel;
  TORCH_CHECK_VALUE(packed.numel() == panels * K * kPanel && packed.is_contiguous(),
                    "packed: expected ", panels * K * kPanel, " contiguous floats for [", K,
                    ", ", N, "], got ", packed.sizes());
  check_fp32(packed, "packed", packed.dim());
  const at::Tensor xc = x.contiguous(), bc = bias.contiguous();
  at::Tensor y = at::empty({R, N}, x.options()), keep_slopes, rc;
  Gemm g;
  g.a = xc.const_data_ptr<float>();
  g.a_row_stride = K;
  g.b = packed.const_data_ptr<float>();
  g.b_panel_stride = K * kPanel;
  g.c = y.mutable_data_ptr<float>();
  g.ldc = N;
  g.rows = R;
  g.depth = K;
  g.cols = N;
  g.epilogue.bias = bc.const_data_ptr<float>();
  set_activation(g.epilogue, act, slopes, N, keep_slopes);
  if (residual) {
    rc = residual->contiguous();
    check_fp32(rc, "residual", 2);
    TORCH_CHECK_VALUE(rc.size(0) == R && rc.size(1) == N, "residual: expected [", R, ", ", N,
                      "], got ", rc.sizes());
    g.epilogue.residual = rc.const_data_ptr<float>();
    g.epilogue.ld_residual = N;
  }
  if (column_map) {
    TORCH_CHECK_TYPE(column_map->scalar_type() == at::kInt && column_map->numel() == N &&
                         column_map->is_contiguous(),
                     "column_map: expected N = ", N, " contiguous int32 channel indices");
    const int32_t* map = column_map->const_data_ptr<int32_t>();
    for (int64_t c = 0; c < N; ++c) {
      TORCH_CHECK_VALUE(map[c] >= 0 && map[c] < N, "column_map: index out of range");
    }
    g.epilogue.column_map = map;
  }
  if (R > 0) table(isa).gemm(g, 0, R);
  return y;
}

// y [OH, OW, C] = epilogue(depthwise 3x3 of x [H, W, C], weight [9, C], padding 1).
at::Tensor frozen_depthwise(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, int64_t stride, int64_t act,
                            const c10::optional<at::Tensor>& slopes,
                            c10::optional<c10::string_view> isa) {
  check_fp32(x, "x", 3);
  check_fp32(weight, "weight", 2);
  check_fp32(bias, "bias", 1);
  const int64_t H = x.size(0), W = x.size(1), C = x.size(2);
  TORCH_CHECK_VALUE(weight.size(0) == 9 && weight.size(1) == C && bias.size(0) == C,
                    "weight, bias: expected [9, ", C, "] and [", C, "]");
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, "stride: expected 1 or 2, got ", stride);
  const int64_t OH = (H - 1) / stride + 1, OW = (W - 1) / stride + 1;
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  at::Tensor y = at::empty({OH, OW, C}, x.options()), keep;
  Depthwise d;
  d.x = xc.const_data_ptr<float>();
  d.height = H;
  d.width = W;
  d.ldx = C;
  d.w = wc.const_data_ptr<float>();
  d.y = y.mutable_data_ptr<float>();
  d.out_height = OH;
  d.out_width = OW;
  d.ldy = C;
  d.stride = stride;
  d.channels = C;
  d.epilogue.bias = bc.const_data_ptr<float>();
  set_activation(d.epilogue, act, slopes, C, keep);
  table(isa).depthwise(d, 0, OH);
  return y;
}

// m2f (v absent): out [M, C]; f2m: y [P, C] = x + update. x [P, C], q or k [M, C].
at::Tensor frozen_attention(const at::Tensor& x, const at::Tensor& tokens,
                            const c10::optional<at::Tensor>& values, int64_t heads,
                            c10::optional<c10::string_view> isa) {
  check_fp32(x, "x", 2);
  check_fp32(tokens, "tokens", 2);
  const int64_t P = x.size(0), C = x.size(1), M = tokens.size(0);
  TORCH_CHECK_VALUE(tokens.size(1) == C, "tokens: expected [M, ", C, "], got ",
                    tokens.sizes());
  TORCH_CHECK_VALUE(heads > 0 && C % heads == 0, "heads: expected a divisor of ", C);
  TORCH_CHECK_VALUE(P > 0 && M > 0, "x, tokens: expected at least one position and token");
  const at::Tensor xc = x.contiguous(), tc = tokens.contiguous();
  at::Tensor vc;
  at::Tensor scratch = at::empty({attention_scratch_floats(P, M, C) + 64}, x.options());
  Attention a;
  a.x = xc.const_data_ptr<float>();
  a.positions = P;
  a.channels = C;
  a.ldx = C;
  a.tokens = M;
  a.heads = heads;
  a.q = tc.const_data_ptr<float>();
  a.ldt = C;
  a.scratch = scratch.mutable_data_ptr<float>();
  at::Tensor out;
  if (values) {
    vc = values->contiguous();
    check_fp32(vc, "values", 2);
    TORCH_CHECK_VALUE(vc.sizes() == tc.sizes(), "values: expected the shape of the keys");
    a.v = vc.const_data_ptr<float>();
    out = xc.clone();  // updated in place, as the engine does
    a.x = out.const_data_ptr<float>();
    a.out = out.mutable_data_ptr<float>();
    table(isa).f2m_attention(a);
  } else {
    out = at::empty({M, C}, x.options());
    a.out = out.mutable_data_ptr<float>();
    table(isa).m2f_attention(a);
  }
  return out;
}

at::Tensor frozen_gelu(const at::Tensor& x, c10::optional<c10::string_view> isa) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "x: expected float32, got ", x.scalar_type());
  at::Tensor y = x.contiguous().clone();
  table(isa).gelu(y.mutable_data_ptr<float>(), y.numel());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CPU, m) {
  m.impl("frozen_linear", &frozen_linear);
  m.impl("frozen_depthwise", &frozen_depthwise);
  m.impl("frozen_attention", &frozen_attention);
  m.impl("frozen_gelu", &frozen_gelu);
}

}  // namespace frozen
}  // namespace mf_kernels

// Former->Mobile cross-attention on the CPU (with its residual), forward and backward.
//
//   y[b,hc,p] = x[b,hc,p] + sum_m A[b,h,p,m] v[b,m,hc],   A = softmax_m(s <x[b,hc,p], k[b,m,hc]>),
//   s = ch^-1/2, ch = C / heads, hc the channels of head h, m over the M tokens.
//
// Backward (per b, h, position p; A[m] recomputed, M values):
//   dA[m] = <dy[hc,p], v[m,hc]>,  dS = A (dA - sum_m A dA)
//   grad_x[hc,p] = dy[hc,p] + s sum_m dS[m] k[m,hc]
//   grad_k[m,hc] = s sum_p dS[p,m] x[hc,p],  grad_v[m,hc] = sum_p A[p,m] dy[hc,p]
//
// One pass over x (and grad_y) in, one pass out; nothing of size B x heads x P x M is stored.
// Work is split over (batch, head, chunk of positions); the position reductions of grad_k and
// grad_v go through one partial buffer per task, summed at the end.
// Inner kernels: f2m_attention_kernels.h (per instruction set), attention_simd.h.
#include <torch/library.h>

#include "attention_common.h"

namespace mf_kernels {
namespace {
#define MF_ATTENTION_KERNELS "f2m_attention_kernels.h"
#include "attention_isa.h"

using attention::Problem;

void check_inputs(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  check_f2m_attention_args(x, k, v, heads);
}

at::Tensor f2m_attention_cpu(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
                             int64_t heads) {
  check_inputs(x, k, v, heads);
  const at::MemoryFormat format = output_format(x);
  const int64_t M = k.size(1);
  if (M == 0) return x.clone(format);  // no tokens: the update is an empty sum
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(format));
  if (y.numel() == 0) return y;
  const at::Tensor xc = attention::feature_map(x, x);
  const at::Tensor kc = k.contiguous(), vc = v.contiguous();
  const Problem n = attention::make_problem(xc, M, heads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "f2m_attention", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* kp = kc.const_data_ptr<scalar_t>();
    const scalar_t* vp = vc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n.tasks(), 1, [&](int64_t begin, int64_t end) {
      MF_ISA_CALL(f2m_forward_tasks<scalar_t>, n, xp, kp, vp, yp, begin, end);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> f2m_attention_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& k, const at::Tensor& v,
    int64_t heads) {
  check_inputs(x, k, v, heads);
  check_same(x, grad_y, "x", "grad_y");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "grad_y: expected the shape of x ", x.sizes(),
                    ", got ", grad_y.sizes());
  const at::MemoryFormat format = output_format(x);
  const int64_t M = k.size(1);
  const at::Tensor gc = attention::feature_map(grad_y, x);
  if (M == 0 || x.numel() == 0) {  // y = x, or nothing to sum over for grad_k, grad_v
    at::Tensor grad_x = M == 0 ? gc.clone(format)
                               : at::empty(x.sizes(), x.options().memory_format(format));
    return {grad_x, at::zeros(k.sizes(), k.options()), at::zeros(v.sizes(), v.options())};
  }
  const at::Tensor xc = attention::feature_map(x, x);
  const at::Tensor kc = k.contiguous(), vc = v.contiguous();
  const Problem n = attention::make_problem(xc, M, heads);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor grad_k = at::empty(k.sizes(), k.options());
  at::Tensor grad_v = at::empty(v.sizes(), v.options());
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "f2m_attention_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<T> dk(n.tasks() * M * n.ch), dv(dk.size());
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* kp = kc.const_data_ptr<scalar_t>();
    const scalar_t* vp = vc.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n.tasks(), 1, [&](int64_t begin, int64_t end) {
      MF_ISA_CALL(f2m_backward_tasks<scalar_t>, n, gp, xp, kp, vp, gxp, dk.data(), dv.data(), begin,
                  end);
    });
    // Sum the chunks: grad_k = s * sum dS X^T, grad_v = sum A dY^T.
    scalar_t* gk = grad_k.mutable_data_ptr<scalar_t>();
    scalar_t* gv = grad_v.mutable_data_ptr<scalar_t>();
    const T s = static_cast<T>(n.scale);
    for (int64_t bh = 0; bh < n.B * n.heads; ++bh) {
      const int64_t b = bh / n.heads, h = bh % n.heads;
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t c = 0; c < n.ch; ++c) {
          T sk = 0, sv = 0;
          for (int64_t i = 0; i < n.nchunks; ++i) {
            const int64_t at = ((bh * n.nchunks + i) * M + m) * n.ch + c;
            sk += dk[at];
            sv += dv[at];
          }
          const int64_t o = (b * M + m) * n.C + h * n.ch + c;
          gk[o] = static_cast<scalar_t>(s * sk);
          gv[o] = static_cast<scalar_t>(sv);
        }
      }
    }
  });
  return {grad_x, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CPU, m) {
  m.impl("f2m_attention", &f2m_attention_cpu);
  m.impl("f2m_attention_backward", &f2m_attention_backward_cpu);
}

}  // namespace mf_kernels

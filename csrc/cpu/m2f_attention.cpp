// Mobile->Former cross-attention on the CPU, forward and backward.
//
//   out[b,m,hc] = sum_p A[b,h,m,p] x[b,hc,p],   A = softmax_p(s <q[b,m,hc], x[b,hc,p]>),
//   s = ch^-1/2, ch = C / heads, hc the channels of head h, p over the H*W positions.
//
// Backward (per b, h; X = x[b,hc,:] as [ch, P], Q, dO, O as [M, ch]):
//   dA = dO X,  delta[m] = sum_c dO[m,c] O[m,c],  dS = A (dA - delta)
//   grad_q = s dS X^T,  grad_x = s Q^T dS + dO^T A
//
// The forward reads x once, tile by tile, with an online softmax (flash-attention's running
// max and sum), and returns with out the log-sum-exp lse[b,h,m] = log sum_p exp(s <q, x>) of
// every token row. The backward takes lse (A = exp(S - lse)) and makes one pass over x that
// produces grad_x tile by tile and accumulates grad_q; A is never stored. Work is split over
// (batch, head) and, when that leaves threads idle (batch 1 has only `heads` slices), over
// chunks of positions whose partial results are merged at the end.
// Inner kernels: m2f_attention_kernels.h (per instruction set), attention_simd.h.
#include <torch/library.h>

#include "attention_common.h"

namespace mf_kernels {
namespace {
#define MF_ATTENTION_KERNELS "m2f_attention_kernels.h"
#include "attention_isa.h"

using attention::Problem;

void check_inputs(const at::Tensor& x, const at::Tensor& q, int64_t heads) {
  check_m2f_attention_args(x, q, heads);
}

// Merges the chunks of each (b, head): with the overall max mx*, the chunk weights are
// 2^(mx_i - mx*) (the maxima are in base 2); the sum l and the output accumulator combine
// with these weights. Writes lse = ln(2) (mx* + log2 l), the natural log-sum-exp of the row,
// and out = acc / l.
template <typename S, typename T>
void merge_chunks(const Problem& n, const T* state, T* lse, S* out) {
  const int64_t M = n.M, ch = n.ch, size = n.M * (n.ch + 2);
  constexpr double kLn2 = 0.6931471805599453;
  at::parallel_for(0, n.B * n.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(ch);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / n.heads, h = bh % n.heads;
      for (int64_t m = 0; m < M; ++m) {
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t i = 0; i < n.nchunks; ++i) {
          mx = std::max(mx, state[(bh * n.nchunks + i) * size + m]);
        }
        T l = 0;
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t i = 0; i < n.nchunks; ++i) {
          const T* st = state + (bh * n.nchunks + i) * size;
          const T wgt = n.nchunks == 1 ? T(1) : std::exp2(st[m] - mx);
          l += wgt * st[M + m];
          for (int64_t c = 0; c < ch; ++c) acc[c] += wgt * st[2 * M + m * ch + c];
        }
        lse[bh * M + m] = static_cast<T>(kLn2) * (mx + std::log2(l));
        S* o = out + (b * M + m) * n.C + h * ch;
        for (int64_t c = 0; c < ch; ++c) o[c] = static_cast<S>(acc[c] / l);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> m2f_attention_with_lse_cpu(const at::Tensor& x,
                                                              const at::Tensor& q,
                                                              int64_t heads) {
  check_inputs(x, q, heads);
  const int64_t B = x.size(0), C = x.size(1), M = q.size(1);
  at::Tensor out = at::empty({B, M, C}, x.options());
  at::Tensor lse = at::empty({B, heads, M}, x.options().dtype(lse_dtype(x)));
  if (x.size(2) * x.size(3) == 0) {  // a softmax over no position: empty sums
    return {out.zero_(), lse.fill_(-std::numeric_limits<double>::infinity())};
  }
  if (out.numel() == 0) return {out, lse};
  const at::Tensor xc = attention::feature_map(x, x);
  const at::Tensor qc = q.contiguous();
  const Problem n = attention::make_problem(xc, M, heads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "m2f_attention", [&] {
    using T = at::opmath_type<scalar_t>;
    std::vector<T> state(n.tasks() * n.M * (n.ch + 2));
    at::parallel_for(0, n.tasks(), 1, [&](int64_t begin, int64_t end) {
      MF_ISA_CALL(m2f_forward_tasks<scalar_t>, n, xc.const_data_ptr<scalar_t>(),
                  qc.const_data_ptr<scalar_t>(), state.data(), begin, end);
    });
    merge_chunks(n, state.data(), lse.mutable_data_ptr<T>(), out.mutable_data_ptr<scalar_t>());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> m2f_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& q, const at::Tensor& out,
    const at::Tensor& lse, int64_t heads) {
  check_m2f_attention_backward_args(grad_out, x, q, out, lse, heads);
  const int64_t M = q.size(1);
  const at::Tensor xc = attention::feature_map(x, x);
  const Problem n = attention::make_problem(xc, M, heads);
  if (n.B * n.C * n.P == 0 || M == 0) {  // an empty sum on either side: zero gradients
    return {at::zeros(x.sizes(), x.options().memory_format(output_format(x))),
            at::zeros(q.sizes(), q.options())};
  }
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(output_format(x)));
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  const at::Tensor qc = q.contiguous(), gc = grad_out.contiguous(), oc = out.contiguous();
  // The kernels' scores are in base 2: lse2 = log2(e) lse.
  const at::Tensor lse2 = lse.mul(1.4426950408889634).contiguous();
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "m2f_attention_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* qp = qc.const_data_ptr<scalar_t>();
    std::vector<T> dq(n.tasks() * M * n.ch), dsum(n.tasks() * M);
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* op = oc.const_data_ptr<scalar_t>();
    at::parallel_for(0, n.tasks(), 1, [&](int64_t begin, int64_t end) {
      MF_ISA_CALL(m2f_backward_tasks<scalar_t>, n, xp, qp, gp, op, lse2.const_data_ptr<T>(), gx,
                  dq.data(), dsum.data(), begin, end);
    });
    // grad_q = s * (sum of the chunks' dS X^T), corrected for the error of delta. The kernels
    // take delta = sum_c dO O from the forward output O, in the input dtype: in fp16/bf16 its
    // rounding (2^-9 of O in bf16) shifts every dS of the row alike, and over the H*W positions
    // grad_q sums that shift coherently (up to 1.5x what the 2x rule allows, where the
    // reference's independent roundings average out). With the row's exact D = sum_p A dA:
    // dS_exact = dS + A (delta - D), so grad_q += s (delta - D) sum_p A x = s (delta - D) O
    // (O's own rounding enters only as a product of two roundings). grad_x keeps delta: each
    // of its elements sees the error once, not summed.
    scalar_t* gq = grad_q.mutable_data_ptr<scalar_t>();
    const T s = static_cast<T>(n.scale);
    for (int64_t bh = 0; bh < n.B * n.heads; ++bh) {
      const int64_t b = bh / n.heads, h = bh % n.heads;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t row = (b * M + m) * n.C + h * n.ch;
        T delta = 0, exact = 0;  // delta exactly as the kernels computed it
        for (int64_t c = 0; c < n.ch; ++c) {
          delta += static_cast<T>(gp[row + c]) * static_cast<T>(op[row + c]);
        }
        for (int64_t i = 0; i < n.nchunks; ++i) exact += dsum[(bh * n.nchunks + i) * M + m];
        for (int64_t c = 0; c < n.ch; ++c) {
          T sum = 0;
          for (int64_t i = 0; i < n.nchunks; ++i) {
            sum += dq[((bh * n.nchunks + i) * M + m) * n.ch + c];
          }
          sum += (delta - exact) * static_cast<T>(op[row + c]);
          gq[row + c] = static_cast<scalar_t>(s * sum);
        }
      }
    }
  });
  return {grad_x, grad_q};
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CPU, m) {
  m.impl("m2f_attention_with_lse", &m2f_attention_with_lse_cpu);
  m.impl("m2f_attention_backward", &m2f_attention_backward_cpu);
}

}  // namespace mf_kernels

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
// max and sum). The backward recomputes the softmax statistics in a first pass over x, then
// makes a second pass that produces grad_x tile by tile and accumulates grad_q; A is never
// stored. Work is split over (batch, head) and, when that leaves threads idle (batch 1 has
// only `heads` slices), over chunks of positions whose partial results are merged at the end.
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
// with these weights. Writes the final max and sum (for the backward) to stats, and
// out = acc / l when out is given.
template <typename S, typename T>
void merge_chunks(const Problem& n, const T* state, T* stats, S* out) {
  const int64_t M = n.M, ch = n.ch, size = n.M * (n.ch + 2);
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
          if (out != nullptr) {
            for (int64_t c = 0; c < ch; ++c) acc[c] += wgt * st[2 * M + m * ch + c];
          }
        }
        stats[bh * 2 * M + m] = mx;
        stats[bh * 2 * M + M + m] = l;
        if (out != nullptr) {
          S* o = out + (b * M + m) * n.C + h * ch;
          for (int64_t c = 0; c < ch; ++c) o[c] = static_cast<S>(acc[c] / l);
        }
      }
    }
  });
}

// The softmax statistics (and, with out given, the output) of every (b, head).
template <typename S, typename T = at::opmath_type<S>>
std::vector<T> forward_pass(const Problem& n, const S* x, const S* q, S* out) {
  std::vector<T> state(n.tasks() * n.M * (n.ch + 2));
  std::vector<T> stats(n.B * n.heads * 2 * n.M);
  const bool values = out != nullptr;
  at::parallel_for(0, n.tasks(), 1, [&](int64_t begin, int64_t end) {
    MF_ISA_CALL(m2f_forward_tasks<S>, n, x, q, state.data(), values, begin, end);
  });
  merge_chunks(n, state.data(), stats.data(), out);
  return stats;
}

at::Tensor m2f_attention_cpu(const at::Tensor& x, const at::Tensor& q, int64_t heads) {
  check_inputs(x, q, heads);
  const int64_t B = x.size(0), C = x.size(1), M = q.size(1);
  if (x.size(2) * x.size(3) == 0) return at::zeros({B, M, C}, x.options());  // empty sums
  at::Tensor out = at::empty({B, M, C}, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor xc = attention::feature_map(x, x);
  const at::Tensor qc = q.contiguous();
  const Problem n = attention::make_problem(xc, M, heads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "m2f_attention", [&] {
    forward_pass<scalar_t>(n, xc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(),
                           out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> m2f_attention_backward_cpu(const at::Tensor& grad_out,
                                                              const at::Tensor& x,
                                                              const at::Tensor& q,
                                                              const at::Tensor& out,
                                                              int64_t heads) {
  check_inputs(x, q, heads);
  check_same(x, grad_out, "x", "grad_out");
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes(), "grad_out: expected the shape of q ",
                    q.sizes(), ", got ", grad_out.sizes());
  check_same(x, out, "x", "out");
  TORCH_CHECK_VALUE(out.sizes() == q.sizes(), "out: expected the shape of q ", q.sizes(),
                    ", got ", out.sizes());
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
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "m2f_attention_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* qp = qc.const_data_ptr<scalar_t>();
    const std::vector<T> stats = forward_pass<scalar_t>(n, xp, qp, nullptr);
    std::vector<T> dq(n.tasks() * M * n.ch);
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n.tasks(), 1, [&](int64_t begin, int64_t end) {
      MF_ISA_CALL(m2f_backward_tasks<scalar_t>, n, xp, qp, gc.const_data_ptr<scalar_t>(),
                  oc.const_data_ptr<scalar_t>(), stats.data(), gx, dq.data(), begin, end);
    });
    // grad_q = s * (sum of the chunks' dS X^T).
    scalar_t* gq = grad_q.mutable_data_ptr<scalar_t>();
    const T s = static_cast<T>(n.scale);
    for (int64_t bh = 0; bh < n.B * n.heads; ++bh) {
      const int64_t b = bh / n.heads, h = bh % n.heads;
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t c = 0; c < n.ch; ++c) {
          T sum = 0;
          for (int64_t i = 0; i < n.nchunks; ++i) {
            sum += dq[((bh * n.nchunks + i) * M + m) * n.ch + c];
          }
          gq[(b * M + m) * n.C + h * n.ch + c] = static_cast<scalar_t>(s * sum);
        }
      }
    }
  });
  return {grad_x, grad_q};
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CPU, m) {
  m.impl("m2f_attention", &m2f_attention_cpu);
  m.impl("m2f_attention_backward", &m2f_attention_backward_cpu);
}

}  // namespace mf_kernels

// Mobile->Former cross-attention core on CUDA, forward and backward.
//
//   out[b,m,hc] = sum_p A[b,h,m,p] x[b,hc,p],  A = softmax_p(s <q[b,m,hc], x[b,hc,p]>),
//   s = (C/heads)^-1/2, hc the C/heads = D channels of head h, p over the P = H*W positions.
//
// The forward also returns lse[b,h,m] = log sum_p exp(s <q[b,m,hc], x[b,hc,p]>) (natural log,
// [B, heads, M]), so that the backward gets A = exp(s <q, x> - lse) without a statistics pass.
// Backward (grad_out = dO, out = O):
//   delta[m] = sum_c dO[m,c] O[m,c]            (per head)
//   dS[m,p]  = A[m,p] (<dO[m], x[p]> - delta[m])
//   grad_q   = s dS x^T = s sum_p dS[m,p] (x[p] - O[m]) (sum_p dS = 0),
//   grad_x[p] = s sum_m dS[m,p] q[m] + sum_m A[m,p] dO[m]
//
// Forward: one block per (b, head, token chunk of mt tokens, split of positions). The block
// walks its positions in tiles of tp: the x tile [D, tp] goes to shared memory (read once from
// global memory, coalesced for NCHW and channels_last alike), scores [mt, tp] are computed from
// it, each token row keeps an online softmax (running max and sum, one warp per row), and the
// unnormalised output [mt, D] accumulates in shared memory. Each block writes fp32 partials
// (max, sum, output) and a combine kernel merges the splits into out and lse. With M <= 32
// tokens (the model has 3 to 6) there is a single chunk and x is read once; M > 32 re-reads x
// once per chunk.
// Backward: one block per (b, head, chunk, split) recomputes A (from lse) and dS tile by tile,
// writes grad_x for its tile (fp32 atomics when there are several chunks) and accumulates
// grad_q in shared memory, written as per-split partials and summed in a fixed order. Scores
// are kept in the log2 domain (exp2).
#include <torch/library.h>

#include "attention.cuh"
#include "common.cuh"

namespace mf_kernels {
namespace cuda_kernels {
namespace {

// Shared memory of the forward kernel, in elements.
inline int64_t forward_smem(int64_t mt, int64_t tp, int64_t D) {
  return 2 * mt * D + D * (tp + 1) + mt * tp + 3 * mt;  // q, acc, x tile, scores, row stats
}

// Forward. Partials: pmax, psum [splits, B, heads, M] (log2 domain), pacc [splits, B, M, C]
// (unnormalised output).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ q, const Params p,
                   at::opmath_type<scalar_t>* __restrict__ pmax,
                   at::opmath_type<scalar_t>* __restrict__ psum,
                   at::opmath_type<scalar_t>* __restrict__ pacc) {
  using acc_t = at::opmath_type<scalar_t>;
  const Block blk = block_coords(p);
  const int D = static_cast<int>(p.D), tp = static_cast<int>(p.tp), ld = tp + 1;
  const int64_t m0 = blk.chunk * p.mt, c0 = blk.h * p.D;
  const int mt = static_cast<int>(std::min<int64_t>(p.mt, p.M - m0));
  const int64_t p_begin = blk.split * p.split_len;
  const int64_t p_end = std::min<int64_t>(p.P, p_begin + p.split_len);
  const acc_t scale2 = static_cast<acc_t>(p.scale * kLog2e);
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lane = tid % kWarp, warp = tid / kWarp, warps = nthreads / kWarp;

  MF_DYNAMIC_SMEM(acc_t, smem);
  acc_t* qs = smem;                // [mt][D]
  acc_t* xs = qs + p.mt * D;       // [D][tp + 1]
  acc_t* ss = xs + D * ld;         // [mt][tp] scores, then probabilities
  acc_t* rmax = ss + p.mt * tp;    // [mt] running max (log2 domain)
  acc_t* rsum = rmax + p.mt;       // [mt] running sum
  acc_t* corr = rsum + p.mt;       // [mt] this tile's rescaling of the accumulator
  acc_t* acc = corr + p.mt;        // [mt][D]

  for (int i = tid; i < mt * D; i += nthreads) {
    const int m = i / D, d = i - m * D;
    qs[i] = static_cast<acc_t>(q[(blk.b * p.M + m0 + m) * p.C + c0 + d]);
    acc[i] = acc_t(0);
  }
  for (int m = tid; m < mt; m += nthreads) {
    rmax[m] = -INFINITY;
    rsum[m] = acc_t(0);
  }

  for (int64_t t0 = p_begin; t0 < p_end; t0 += tp) {
    const int valid = static_cast<int>(std::min<int64_t>(tp, p_end - t0));
    __syncthreads();  // the previous tile is consumed; the prologue is visible
    for (int i = tid; i < D * tp; i += nthreads) {
      int d, t;
      tile_coords(p, i, D, tp, d, t);
      xs[d * ld + t] = t < valid ? static_cast<acc_t>(x[x_offset(p, blk.b, c0 + d, t0 + t)]) : acc_t(0);
    }
    __syncthreads();
    for (int i = tid; i < mt * tp; i += nthreads) {
      const int m = i / tp, t = i - m * tp;
      acc_t dot = 0;
      for (int d = 0; d < D; ++d) dot += qs[m * D + d] * xs[d * ld + t];
      ss[i] = dot * scale2;
    }
    __syncthreads();
    for (int m = warp; m < mt; m += warps) {  // one warp per token row
      acc_t tile_max = -INFINITY;
      for (int t = lane; t < valid; t += kWarp) tile_max = fmax2(tile_max, ss[m * tp + t]);
      tile_max = warp_max(tile_max);
      const acc_t old = rmax[m];
      const acc_t now = fmax2(old, tile_max);
      acc_t tile_sum = 0;
      for (int t = lane; t < tp; t += kWarp) {
        const acc_t e = t < valid ? fexp2(ss[m * tp + t] - now) : acc_t(0);
        ss[m * tp + t] = e;
        tile_sum += e;
      }
      tile_sum = warp_sum(tile_sum);
      __syncwarp();
      if (lane == 0) {
        const acc_t c = fexp2(old - now);  // 0 on the first tile (old = -inf)
        rsum[m] = rsum[m] * c + tile_sum;
        rmax[m] = now;
        corr[m] = c;
      }
    }
    __syncthreads();
    for (int i = tid; i < mt * D; i += nthreads) {
      const int m = i / D, d = i - m * D;
      acc_t a = acc[i] * corr[m];
      for (int t = 0; t < valid; ++t) a += ss[m * tp + t] * xs[d * ld + t];
      acc[i] = a;
    }
  }
  __syncthreads();
  const int64_t stats = ((blk.split * p.B + blk.b) * p.heads + blk.h) * p.M + m0;
  for (int m = tid; m < mt; m += nthreads) {
    pmax[stats + m] = rmax[m];
    psum[stats + m] = rsum[m];
  }
  for (int i = tid; i < mt * D; i += nthreads) {
    const int m = i / D, d = i - m * D;
    pacc[((blk.split * p.B + blk.b) * p.M + m0 + m) * p.C + c0 + d] = acc[i];
  }
}

// out[b, m, c] from the partials of every split, and lse[b, h, m] = ln 2 (max + log2 sum) from
// the thread of the head's first channel.
template <typename scalar_t>
__global__ void combine_kernel(const at::opmath_type<scalar_t>* __restrict__ pmax,
                               const at::opmath_type<scalar_t>* __restrict__ psum,
                               const at::opmath_type<scalar_t>* __restrict__ pacc,
                               scalar_t* __restrict__ out,
                               at::opmath_type<scalar_t>* __restrict__ lse, const Params p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = p.B * p.M * p.C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % p.C, bm = i / p.C, m = bm % p.M, b = bm / p.M, h = c / p.D;
    acc_t top = -INFINITY;
    for (int64_t s = 0; s < p.splits; ++s) top = fmax2(top, pmax[((s * p.B + b) * p.heads + h) * p.M + m]);
    acc_t sum = 0, o = 0;
    for (int64_t s = 0; s < p.splits; ++s) {
      const int64_t j = ((s * p.B + b) * p.heads + h) * p.M + m;
      const acc_t w = fexp2(pmax[j] - top);
      sum += psum[j] * w;
      o += pacc[(s * p.B + b) * p.M * p.C + m * p.C + c] * w;
    }
    out[i] = static_cast<scalar_t>(o / sum);
    if (c == h * p.D) lse[(b * p.heads + h) * p.M + m] = static_cast<acc_t>(kLn2) * (top + flog2(sum));
  }
}

// Shared memory of the backward kernel, in elements.
inline int64_t backward_smem(int64_t mt, int64_t tp, int64_t D) {
  return 3 * mt * D + D * (tp + 1) + 2 * mt * tp + 2 * mt;
}

// Backward. lse: [B, heads, M] (natural log). grad_x: written directly (gx) with a single chunk,
// else added with atomics into gx_acc (zero-initialised, the layout of gx). pdq:
// [splits, B, M, C], the unscaled sum_p dS x of each split. Launch bounds with one resident
// block: without it ptxas aimed at more blocks per SM and spilled (fp64: 32 bytes).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1)
    backward_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ x,
                    const scalar_t* __restrict__ q, const scalar_t* __restrict__ out,
                    const at::opmath_type<scalar_t>* __restrict__ lse, const Params p,
                    scalar_t* __restrict__ gx, at::opmath_type<scalar_t>* __restrict__ gx_acc,
                    at::opmath_type<scalar_t>* __restrict__ pdq) {
  using acc_t = at::opmath_type<scalar_t>;
  const Block blk = block_coords(p);
  const int D = static_cast<int>(p.D), tp = static_cast<int>(p.tp), ld = tp + 1;
  const int64_t m0 = blk.chunk * p.mt, c0 = blk.h * p.D;
  const int mt = static_cast<int>(std::min<int64_t>(p.mt, p.M - m0));
  const int64_t p_begin = blk.split * p.split_len;
  const int64_t p_end = std::min<int64_t>(p.P, p_begin + p.split_len);
  const acc_t scale = static_cast<acc_t>(p.scale);
  const acc_t scale2 = static_cast<acc_t>(p.scale * kLog2e);
  const int tid = threadIdx.x, nthreads = blockDim.x;

  MF_DYNAMIC_SMEM(acc_t, smem);
  acc_t* qs = smem;               // [mt][D]
  acc_t* dos = qs + p.mt * D;     // [mt][D] grad_out
  acc_t* dq = dos + p.mt * D;     // [mt][D] sum_p dS x
  acc_t* xs = dq + p.mt * D;      // [D][tp + 1]
  acc_t* as = xs + D * ld;        // [mt][tp] A
  acc_t* ds = as + p.mt * tp;     // [mt][tp] dS
  acc_t* lses = ds + p.mt * tp;   // [mt] log2-sum-exp
  acc_t* delta = lses + p.mt;     // [mt]

  for (int i = tid; i < mt * D; i += nthreads) {
    const int m = i / D, d = i - m * D;
    const int64_t o = (blk.b * p.M + m0 + m) * p.C + c0 + d;
    qs[i] = static_cast<acc_t>(q[o]);
    dos[i] = static_cast<acc_t>(gout[o]);
    dq[i] = acc_t(0);
  }
  for (int m = tid; m < mt; m += nthreads) {
    lses[m] = lse[(blk.b * p.heads + blk.h) * p.M + m0 + m] * static_cast<acc_t>(kLog2e);
    // delta = <dO, O>, summed in the order of <dO, x> below, so that both agree exactly where
    // they should (one position: O = x and dS = 0).
    const int64_t o = (blk.b * p.M + m0 + m) * p.C + c0;
    acc_t dot = 0;
    for (int d = 0; d < D; ++d) {
      dot += static_cast<acc_t>(gout[o + d]) * static_cast<acc_t>(out[o + d]);  // dos[] is not complete yet
    }
    delta[m] = dot;
  }

  for (int64_t t0 = p_begin; t0 < p_end; t0 += tp) {
    const int valid = static_cast<int>(std::min<int64_t>(tp, p_end - t0));
    __syncthreads();  // the previous tile is consumed; the prologue is visible
    for (int i = tid; i < D * tp; i += nthreads) {
      int d, t;
      tile_coords(p, i, D, tp, d, t);
      xs[d * ld + t] = t < valid ? static_cast<acc_t>(x[x_offset(p, blk.b, c0 + d, t0 + t)]) : acc_t(0);
    }
    __syncthreads();
    for (int i = tid; i < mt * tp; i += nthreads) {
      const int m = i / tp, t = i - m * tp;
      acc_t a = 0, dsv = 0;
      if (t < valid) {
        acc_t score = 0, dp = 0;
        for (int d = 0; d < D; ++d) {
          const acc_t xv = xs[d * ld + t];
          score += qs[m * D + d] * xv;
          dp += dos[m * D + d] * xv;
        }
        a = fexp2(score * scale2 - lses[m]);
        dsv = a * (dp - delta[m]);
      }
      as[i] = a;
      ds[i] = dsv;
    }
    __syncthreads();
    for (int i = tid; i < D * tp; i += nthreads) {
      int d, t;
      tile_coords(p, i, D, tp, d, t);
      if (t >= valid) continue;
      acc_t key = 0, value = 0;
      for (int m = 0; m < mt; ++m) {
        key += qs[m * D + d] * ds[m * tp + t];
        value += dos[m * D + d] * as[m * tp + t];
      }
      const acc_t g = scale * key + value;
      const int64_t o = x_offset(p, blk.b, c0 + d, t0 + t);
      if (gx_acc != nullptr) {
        atomicAdd(gx_acc + o, g);
      } else {
        gx[o] = static_cast<scalar_t>(g);
      }
    }
    // sum_p dS x, as sum_p dS (x - O): equal in exact arithmetic (sum_p dS = 0), but delta, from
    // the stored (fp16/bf16-rounded) O, shifts every dS of a row alike, and sum_p dS x would
    // carry that shift coherently over all positions (5-130 ulp off on a 112x112 map in bf16);
    // centred by O, the shift cancels.
    for (int i = tid; i < mt * D; i += nthreads) {
      const int m = i / D, d = i - m * D;
      const acc_t o = static_cast<acc_t>(out[(blk.b * p.M + m0 + m) * p.C + c0 + d]);
      acc_t a = dq[i];
      for (int t = 0; t < valid; ++t) a += ds[m * tp + t] * (xs[d * ld + t] - o);
      dq[i] = a;
    }
  }
  // Each thread wrote only its own dq entries: no barrier needed before the write-out.
  for (int i = tid; i < mt * D; i += nthreads) {
    const int m = i / D, d = i - m * D;
    pdq[((blk.split * p.B + blk.b) * p.M + m0 + m) * p.C + c0 + d] = dq[i];
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct Inputs {
  int64_t B, C, P, M, heads;
};

Inputs check_inputs(const at::Tensor& x, const at::Tensor& q, int64_t heads) {
  check_m2f_attention_args(x, q, heads);
  return {x.size(0), x.size(1), x.size(2) * x.size(3), q.size(1), heads};
}

template <typename acc_t>
Params make_params(const Inputs& n, bool cl, bool backward, const DeviceContext& ctx) {
  Params p;
  p.B = n.B;
  p.C = n.C;
  p.P = n.P;
  p.M = n.M;
  p.heads = n.heads;
  p.D = n.C / n.heads;
  p.cl = cl;
  p.scale = 1.0 / std::sqrt(static_cast<double>(p.D));
  const int64_t D = p.D;
  const Tiles tiles = backward
      ? choose_tiles(n.M, D, sizeof(acc_t), [D](int64_t mt, int64_t tp) { return backward_smem(mt, tp, D); },
                     "m2f_attention_backward")
      : choose_tiles(n.M, D, sizeof(acc_t), [D](int64_t mt, int64_t tp) { return forward_smem(mt, tp, D); },
                     "m2f_attention");
  p.mt = tiles.mt;
  p.tp = tiles.tp;
  p.chunks = ceil_div(n.M, p.mt);
  p.splits = choose_splits(n.P, p.tp, n.B * n.heads * p.chunks, ctx.sms, p.split_len);
  TORCH_CHECK_VALUE(n.B * n.heads * p.chunks * p.splits <= kMaxGrid, "x: too large for the CUDA kernel");
  return p;
}

std::tuple<at::Tensor, at::Tensor> m2f_attention_with_lse_cuda(const at::Tensor& x, const at::Tensor& q,
                                                               int64_t heads) {
  const Inputs n = check_inputs(x, q, heads);
  at::Tensor out = at::empty({n.B, n.M, n.C}, q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor lse = at::empty({n.B, n.heads, n.M}, x.options().dtype(lse_dtype(x)));
  if (n.B == 0 || n.M == 0 || n.C == 0) return {out, lse};
  if (n.P == 0) return {out.zero_(), lse.fill_(-INFINITY)};  // a softmax over no position
  const DeviceContext ctx(x);
  const at::MemoryFormat format = output_format(x);
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor qc = q.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "m2f_attention_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Params p = make_params<acc_t>(n, format == at::MemoryFormat::ChannelsLast, false, ctx);
    const at::TensorOptions opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor pmax = at::empty({p.splits, n.B, n.heads, n.M}, opts);
    at::Tensor psum = at::empty({p.splits, n.B, n.heads, n.M}, opts);
    at::Tensor pacc = at::empty({p.splits, n.B, n.M, n.C}, opts);
    const size_t smem = sizeof(acc_t) * forward_smem(p.mt, p.tp, p.D);
    MF_LAUNCH(dim3(static_cast<unsigned>(p.B * p.heads * p.chunks * p.splits)), dim3(kThreads), smem,
              ctx.stream, forward_kernel<scalar_t>)(
        xc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(), p, pmax.mutable_data_ptr<acc_t>(),
        psum.mutable_data_ptr<acc_t>(), pacc.mutable_data_ptr<acc_t>());
    MF_LAUNCH_CHECK();
    constexpr int kCombineThreads = 256;
    MF_LAUNCH(dim3(grid_for(out.numel(), kCombineThreads, ctx.sms)), dim3(kCombineThreads), 0, ctx.stream,
              combine_kernel<scalar_t>)(pmax.const_data_ptr<acc_t>(), psum.const_data_ptr<acc_t>(),
                                        pacc.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(),
                                        lse.mutable_data_ptr<acc_t>(), p);
    MF_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> m2f_attention_backward_cuda(const at::Tensor& grad_out,
                                                               const at::Tensor& x, const at::Tensor& q,
                                                               const at::Tensor& out, const at::Tensor& lse,
                                                               int64_t heads) {
  check_m2f_attention_backward_args(grad_out, x, q, out, lse, heads);
  const Inputs n = {x.size(0), x.size(1), x.size(2) * x.size(3), q.size(1), heads};
  const at::MemoryFormat format = output_format(x);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor gq = at::empty({n.B, n.M, n.C}, q.options().memory_format(at::MemoryFormat::Contiguous));
  if (n.B == 0 || n.M == 0 || n.C == 0 || n.P == 0) {
    gx.zero_();
    gq.zero_();
    return {gx, gq};
  }
  const DeviceContext ctx(x);
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor qc = q.contiguous();
  const at::Tensor goc = grad_out.contiguous();
  const at::Tensor oc = out.contiguous();
  const at::Tensor lc = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "m2f_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::TensorOptions opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const Params p = make_params<acc_t>(n, cl, true, ctx);
    at::Tensor gx_buffer;  // fp32 accumulator for grad_x when several chunks add into it
    acc_t* gx_acc = nullptr;
    if (p.chunks > 1) {
      if (std::is_same<scalar_t, acc_t>::value) {
        gx.zero_();
        gx_acc = reinterpret_cast<acc_t*>(gx.mutable_data_ptr());
      } else {
        gx_buffer = at::empty(x.sizes(), opts.memory_format(format)).zero_();  // at::zeros ignores the format
        gx_acc = gx_buffer.mutable_data_ptr<acc_t>();
      }
    }
    at::Tensor pdq = at::empty({p.splits, n.B, n.M, n.C}, opts);
    const size_t smem = sizeof(acc_t) * backward_smem(p.mt, p.tp, p.D);
    MF_LAUNCH(dim3(static_cast<unsigned>(p.B * p.heads * p.chunks * p.splits)), dim3(kThreads), smem,
              ctx.stream, backward_kernel<scalar_t>)(
        goc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(),
        oc.const_data_ptr<scalar_t>(), lc.const_data_ptr<acc_t>(), p, gx.mutable_data_ptr<scalar_t>(),
        gx_acc, pdq.mutable_data_ptr<acc_t>());
    MF_LAUNCH_CHECK();
    if (gx_buffer.defined()) gx.copy_(gx_buffer);
    sum_splits<scalar_t, acc_t>(pdq, gq, p.splits, static_cast<acc_t>(p.scale), ctx);
  });
  return {gx, gq};
}

}  // namespace
}  // namespace cuda_kernels
}  // namespace mf_kernels

#ifndef MF_EMULATE
TORCH_LIBRARY_IMPL(mf_kernels, CUDA, m) {
  m.impl("m2f_attention_with_lse", &mf_kernels::cuda_kernels::m2f_attention_with_lse_cuda);
  m.impl("m2f_attention_backward", &mf_kernels::cuda_kernels::m2f_attention_backward_cuda);
}
#endif

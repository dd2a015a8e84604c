// Former->Mobile cross-attention core (with the residual) on CUDA, forward and backward.
//
//   y[b,hc,p] = x[b,hc,p] + sum_m A[b,h,p,m] v[b,m,hc],  A = softmax_m(s <x[b,hc,p], k[b,m,hc]>),
//   s = (C/heads)^-1/2, hc the C/heads = D channels of head h, m over the M tokens.
//
// Backward (grad_y = dy), recomputing A per position (no [B, heads, P, M] tensor is saved):
//   dA[p,m] = <dy[p], v[m]>,  dS[p,m] = A[p,m] (dA[p,m] - sum_m' A[p,m'] dA[p,m'])
//   grad_x[p] = dy[p] + s sum_m dS[p,m] k[m]
//   grad_k[m] = s sum_p dS[p,m] x[p],  grad_v[m] = sum_p A[p,m] dy[p]
//
// Forward: one block per (b, head, tile of tp positions). The x tile [D, tp] is read once into
// shared memory (coalesced for NCHW and channels_last); the tokens' k and v, mt at a time, go to
// shared memory too; scores [mt, tp] are computed from them, each position keeps an online
// softmax over the token chunks (one thread per position), and the update [D, tp] accumulates in
// shared memory before y = x + update is written. With M <= 32 there is one chunk.
// Backward: one block per (b, head, token chunk, split of positions), k and v of the chunk
// staged once. Per tile it recomputes the scores and dA, the per-position statistics (log2-sum-exp
// and sum_m A dA; computed in the block when there is one chunk, else read from a statistics
// pass over all chunks), then A and dS; writes grad_x of the tile (fp32 atomics onto dy when
// there are several chunks) and accumulates grad_k, grad_v of its tokens in shared memory,
// written as per-split fp32 partials and summed in a fixed order. Scores are in the log2 domain.
#include <torch/library.h>

#include "attention.cuh"
#include "common.cuh"

namespace mf_kernels {
namespace cuda_kernels {
namespace {

// Loads the tile of positions t0 .. t0+valid-1 of channels c0 .. c0+D-1 into dst [D][tp + 1]
// (zeros past valid).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_tile(const Params& p, const scalar_t* __restrict__ src, int64_t b,
                                          int64_t c0, int64_t t0, int valid, acc_t* dst) {
  const int D = static_cast<int>(p.D), tp = static_cast<int>(p.tp), ld = tp + 1;
  for (int i = threadIdx.x; i < D * tp; i += blockDim.x) {
    int d, t;
    tile_coords(p, i, D, tp, d, t);
    dst[d * ld + t] = t < valid ? static_cast<acc_t>(src[x_offset(p, b, c0 + d, t0 + t)]) : acc_t(0);
  }
}

// Loads tokens m0 .. m0+mc-1 of head channels c0 .. c0+D-1 of t [B, M, C] into dst [mc][D].
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_tokens(const Params& p, const scalar_t* __restrict__ src, int64_t b,
                                            int64_t m0, int mc, int64_t c0, acc_t* dst) {
  const int D = static_cast<int>(p.D);
  for (int i = threadIdx.x; i < mc * D; i += blockDim.x) {
    const int m = i / D, d = i - m * D;
    dst[i] = static_cast<acc_t>(src[(b * p.M + m0 + m) * p.C + c0 + d]);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward. blockIdx.x = (b * heads + h) * tiles + tile.
inline int64_t forward_smem(int64_t mt, int64_t tp, int64_t D) {
  return 2 * mt * D + 2 * D * (tp + 1) + mt * tp + 3 * tp;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ k,
                   const scalar_t* __restrict__ v, scalar_t* __restrict__ y, const Params p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = ceil_div(p.P, p.tp);
  int64_t b, h, tile;
  tile_block_coords(p, tiles, b, h, tile);
  const int D = static_cast<int>(p.D), tp = static_cast<int>(p.tp), ld = tp + 1;
  const int64_t c0 = h * p.D, t0 = tile * p.tp;
  const int valid = static_cast<int>(std::min<int64_t>(p.tp, p.P - t0));
  const acc_t scale2 = static_cast<acc_t>(p.scale * kLog2e);
  const int tid = threadIdx.x, nthreads = blockDim.x;

  MF_DYNAMIC_SMEM(acc_t, smem);
  acc_t* ks = smem;              // [mt][D]
  acc_t* vs = ks + p.mt * D;     // [mt][D]
  acc_t* xs = vs + p.mt * D;     // [D][tp + 1]
  acc_t* acc = xs + D * ld;      // [D][tp + 1] unnormalised update
  acc_t* ss = acc + D * ld;      // [mt][tp] scores, then probabilities
  acc_t* cmax = ss + p.mt * tp;  // [tp] running max per position (log2 domain)
  acc_t* csum = cmax + tp;       // [tp] running sum
  acc_t* corr = csum + tp;       // [tp] this chunk's rescaling of the update

  load_tile(p, x, b, c0, t0, valid, xs);
  for (int i = tid; i < D * ld; i += nthreads) acc[i] = acc_t(0);
  for (int t = tid; t < tp; t += nthreads) {
    cmax[t] = -INFINITY;
    csum[t] = acc_t(0);
  }
  for (int64_t m0 = 0; m0 < p.M; m0 += p.mt) {
    const int mc = static_cast<int>(std::min<int64_t>(p.mt, p.M - m0));
    __syncthreads();  // the previous chunk is consumed; the prologue is visible
    load_tokens(p, k, b, m0, mc, c0, ks);
    load_tokens(p, v, b, m0, mc, c0, vs);
    __syncthreads();
    for (int i = tid; i < mc * tp; i += nthreads) {
      const int m = i / tp, t = i - m * tp;
      acc_t dot = 0;
      for (int d = 0; d < D; ++d) dot += ks[m * D + d] * xs[d * ld + t];
      ss[i] = dot * scale2;
    }
    __syncthreads();
    for (int t = tid; t < tp; t += nthreads) {  // one thread per position: softmax over tokens
      const acc_t old = cmax[t];
      acc_t now = old;
      for (int m = 0; m < mc; ++m) now = fmax2(now, ss[m * tp + t]);
      acc_t sum = 0;
      for (int m = 0; m < mc; ++m) {
        const acc_t e = fexp2(ss[m * tp + t] - now);
        ss[m * tp + t] = e;
        sum += e;
      }
      const acc_t c = fexp2(old - now);  // 0 for the first chunk (old = -inf)
      csum[t] = csum[t] * c + sum;
      cmax[t] = now;
      corr[t] = c;
    }
    __syncthreads();
    for (int i = tid; i < D * tp; i += nthreads) {
      const int d = i / tp, t = i - d * tp;
      acc_t a = acc[d * ld + t] * corr[t];
      for (int m = 0; m < mc; ++m) a += ss[m * tp + t] * vs[m * D + d];
      acc[d * ld + t] = a;
    }
  }
  __syncthreads();
  for (int i = tid; i < D * tp; i += nthreads) {
    int d, t;
    tile_coords(p, i, D, tp, d, t);
    if (t < valid) {
      y[x_offset(p, b, c0 + d, t0 + t)] = static_cast<scalar_t>(xs[d * ld + t] + acc[d * ld + t] / csum[t]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward statistics, needed when the tokens come in several chunks: per position,
// lse = log2 sum_m 2^(score) and rowdot = sum_m A dA, over all M tokens. Layout [B, heads, P].
// blockIdx.x = (b * heads + h) * tiles + tile.
inline int64_t stats_smem(int64_t mt, int64_t tp, int64_t D) {
  return 2 * mt * D + 2 * D * (tp + 1) + 2 * mt * tp + 3 * tp;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                 const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const Params p,
                 at::opmath_type<scalar_t>* __restrict__ lse, at::opmath_type<scalar_t>* __restrict__ rowdot) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = ceil_div(p.P, p.tp);
  int64_t b, h, tile;
  tile_block_coords(p, tiles, b, h, tile);
  const int D = static_cast<int>(p.D), tp = static_cast<int>(p.tp), ld = tp + 1;
  const int64_t c0 = h * p.D, t0 = tile * p.tp;
  const int valid = static_cast<int>(std::min<int64_t>(p.tp, p.P - t0));
  const acc_t scale2 = static_cast<acc_t>(p.scale * kLog2e);
  const int tid = threadIdx.x, nthreads = blockDim.x;

  MF_DYNAMIC_SMEM(acc_t, smem);
  acc_t* ks = smem;              // [mt][D]
  acc_t* vs = ks + p.mt * D;     // [mt][D]
  acc_t* xs = vs + p.mt * D;     // [D][tp + 1]
  acc_t* dys = xs + D * ld;      // [D][tp + 1]
  acc_t* ss = dys + D * ld;      // [mt][tp] scores
  acc_t* da = ss + p.mt * tp;    // [mt][tp] dA
  acc_t* cmax = da + p.mt * tp;  // [tp]
  acc_t* csum = cmax + tp;       // [tp]
  acc_t* cdot = csum + tp;       // [tp] running sum_m 2^(score - cmax) dA

  load_tile(p, x, b, c0, t0, valid, xs);
  load_tile(p, gy, b, c0, t0, valid, dys);
  for (int t = tid; t < tp; t += nthreads) {
    cmax[t] = -INFINITY;
    csum[t] = acc_t(0);
    cdot[t] = acc_t(0);
  }
  for (int64_t m0 = 0; m0 < p.M; m0 += p.mt) {
    const int mc = static_cast<int>(std::min<int64_t>(p.mt, p.M - m0));
    __syncthreads();
    load_tokens(p, k, b, m0, mc, c0, ks);
    load_tokens(p, v, b, m0, mc, c0, vs);
    __syncthreads();
    for (int i = tid; i < mc * tp; i += nthreads) {
      const int m = i / tp, t = i - m * tp;
      acc_t score = 0, dot = 0;
      for (int d = 0; d < D; ++d) {
        score += ks[m * D + d] * xs[d * ld + t];
        dot += vs[m * D + d] * dys[d * ld + t];
      }
      ss[i] = score * scale2;
      da[i] = dot;
    }
    __syncthreads();
    for (int t = tid; t < tp; t += nthreads) {
      const acc_t old = cmax[t];
      acc_t now = old;
      for (int m = 0; m < mc; ++m) now = fmax2(now, ss[m * tp + t]);
      acc_t sum = 0, dot = 0;
      for (int m = 0; m < mc; ++m) {
        const acc_t e = fexp2(ss[m * tp + t] - now);
        sum += e;
        dot += e * da[m * tp + t];
      }
      const acc_t c = fexp2(old - now);
      csum[t] = csum[t] * c + sum;
      cdot[t] = cdot[t] * c + dot;
      cmax[t] = now;
    }
  }
  // Each position's statistics were written by the thread that reads them here.
  for (int t = tid; t < valid; t += nthreads) {
    const int64_t o = (b * p.heads + h) * p.P + t0 + t;
    lse[o] = cmax[t] + flog2(csum[t]);
    rowdot[o] = cdot[t] / csum[t];
  }
}

// ---------------------------------------------------------------------------------------------
// Backward. blockIdx.x = ((b * heads + h) * chunks + chunk) * splits + split.
// grad_x: written directly (gx = dy + s dS k) with one chunk; with several, each chunk adds
// s dS k atomically into gx_acc, which holds dy beforehand. pgk, pgv: [splits, B, M, C], the
// unscaled sum_p dS x and sum_p A dy of each split.
inline int64_t backward_smem(int64_t mt, int64_t tp, int64_t D) {
  return 4 * mt * D + 2 * D * (tp + 1) + 2 * mt * tp + 2 * tp;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                    const at::opmath_type<scalar_t>* __restrict__ lse_g,
                    const at::opmath_type<scalar_t>* __restrict__ rowdot_g, const Params p,
                    scalar_t* __restrict__ gx, at::opmath_type<scalar_t>* __restrict__ gx_acc,
                    at::opmath_type<scalar_t>* __restrict__ pgk, at::opmath_type<scalar_t>* __restrict__ pgv) {
  using acc_t = at::opmath_type<scalar_t>;
  const Block blk = block_coords(p);
  const int64_t split = blk.split, chunk = blk.chunk, h = blk.h, b = blk.b;
  const int D = static_cast<int>(p.D), tp = static_cast<int>(p.tp), ld = tp + 1;
  const int64_t m0 = chunk * p.mt, c0 = h * p.D;
  const int mc = static_cast<int>(std::min<int64_t>(p.mt, p.M - m0));
  const int64_t p_begin = split * p.split_len;
  const int64_t p_end = std::min<int64_t>(p.P, p_begin + p.split_len);
  const bool one_chunk = p.chunks == 1;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const acc_t scale2 = static_cast<acc_t>(p.scale * kLog2e);
  const int tid = threadIdx.x, nthreads = blockDim.x;

  MF_DYNAMIC_SMEM(acc_t, smem);
  acc_t* ks = smem;               // [mt][D]
  acc_t* vs = ks + p.mt * D;      // [mt][D]
  acc_t* gk = vs + p.mt * D;      // [mt][D] sum_p dS x
  acc_t* gv = gk + p.mt * D;      // [mt][D] sum_p A dy
  acc_t* xs = gv + p.mt * D;      // [D][tp + 1]
  acc_t* dys = xs + D * ld;       // [D][tp + 1]
  acc_t* as = dys + D * ld;       // [mt][tp] scores, then A
  acc_t* ds = as + p.mt * tp;     // [mt][tp] dA, then dS
  acc_t* lse = ds + p.mt * tp;    // [tp]
  acc_t* rowdot = lse + tp;       // [tp]

  load_tokens(p, k, b, m0, mc, c0, ks);
  load_tokens(p, v, b, m0, mc, c0, vs);
  for (int i = tid; i < mc * D; i += nthreads) gk[i] = gv[i] = acc_t(0);

  for (int64_t t0 = p_begin; t0 < p_end; t0 += tp) {
    const int valid = static_cast<int>(std::min<int64_t>(tp, p_end - t0));
    __syncthreads();  // the previous tile is consumed; the prologue is visible
    load_tile(p, x, b, c0, t0, valid, xs);
    load_tile(p, gy, b, c0, t0, valid, dys);
    if (!one_chunk) {
      for (int t = tid; t < tp; t += nthreads) {
        const int64_t o = (b * p.heads + h) * p.P + t0 + t;
        lse[t] = t < valid ? lse_g[o] : acc_t(0);
        rowdot[t] = t < valid ? rowdot_g[o] : acc_t(0);
      }
    }
    __syncthreads();
    for (int i = tid; i < mc * tp; i += nthreads) {
      const int m = i / tp, t = i - m * tp;
      acc_t score = 0, dot = 0;
      for (int d = 0; d < D; ++d) {
        score += ks[m * D + d] * xs[d * ld + t];
        dot += vs[m * D + d] * dys[d * ld + t];
      }
      as[i] = score * scale2;
      ds[i] = dot;
    }
    __syncthreads();
    if (one_chunk) {  // block-uniform: the statistics from this chunk, which holds every token
      for (int t = tid; t < tp; t += nthreads) {
        acc_t top = -INFINITY;
        for (int m = 0; m < mc; ++m) top = fmax2(top, as[m * tp + t]);
        acc_t sum = 0, dot = 0;
        for (int m = 0; m < mc; ++m) {
          const acc_t e = fexp2(as[m * tp + t] - top);
          sum += e;
          dot += e * ds[m * tp + t];
        }
        lse[t] = top + flog2(sum);
        rowdot[t] = dot / sum;
      }
      __syncthreads();
    }
    for (int i = tid; i < mc * tp; i += nthreads) {
      const int t = i % tp;
      acc_t a = 0, dsv = 0;
      if (t < valid) {
        a = fexp2(as[i] - lse[t]);
        dsv = a * (ds[i] - rowdot[t]);
      }
      as[i] = a;
      ds[i] = dsv;
    }
    __syncthreads();
    for (int i = tid; i < D * tp; i += nthreads) {
      int d, t;
      tile_coords(p, i, D, tp, d, t);
      if (t >= valid) continue;
      acc_t g = 0;
      for (int m = 0; m < mc; ++m) g += ds[m * tp + t] * ks[m * D + d];
      g *= scale;
      const int64_t o = x_offset(p, b, c0 + d, t0 + t);
      if (one_chunk) {
        gx[o] = static_cast<scalar_t>(dys[d * ld + t] + g);
      } else {
        atomicAdd(gx_acc + o, g);
      }
    }
    for (int i = tid; i < mc * D; i += nthreads) {
      const int m = i / D, d = i - m * D;
      acc_t a = gk[i], bv = gv[i];
      for (int t = 0; t < valid; ++t) {
        a += ds[m * tp + t] * xs[d * ld + t];
        bv += as[m * tp + t] * dys[d * ld + t];
      }
      gk[i] = a;
      gv[i] = bv;
    }
  }
  // Each thread wrote only its own gk, gv entries: no barrier needed before the write-out.
  for (int i = tid; i < mc * D; i += nthreads) {
    const int m = i / D, d = i - m * D;
    const int64_t o = ((split * p.B + b) * p.M + m0 + m) * p.C + c0 + d;
    pgk[o] = gk[i];
    pgv[o] = gv[i];
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct Inputs {
  int64_t B, C, P, M, heads;
};

Inputs check_inputs(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  check_f2m_attention_args(x, k, v, heads);
  return {x.size(0), x.size(1), x.size(2) * x.size(3), k.size(1), heads};
}

template <typename acc_t, typename F>
Params make_params(const Inputs& n, bool cl, F smem_elems, const char* op) {
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
  const Tiles tiles = choose_tiles(n.M, D, sizeof(acc_t),
                                   [D, smem_elems](int64_t mt, int64_t tp) { return smem_elems(mt, tp, D); }, op);
  p.mt = tiles.mt;
  p.tp = tiles.tp;
  p.chunks = ceil_div(n.M, p.mt);
  p.splits = 1;
  p.split_len = n.P;
  return p;
}

at::Tensor f2m_attention_cuda(const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  const Inputs n = check_inputs(x, k, v, heads);
  const at::MemoryFormat format = output_format(x);
  if (x.numel() == 0) return at::empty(x.sizes(), x.options().memory_format(format));
  // No tokens: the softmax over an empty set contributes nothing, y = x.
  if (n.M == 0) return x.contiguous(format).clone(format);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(format));
  const DeviceContext ctx(x);
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor kc = k.contiguous();
  const at::Tensor vc = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "f2m_attention_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Params p = make_params<acc_t>(n, format == at::MemoryFormat::ChannelsLast,
                                        [](int64_t mt, int64_t tp, int64_t D) { return forward_smem(mt, tp, D); },
                                        "f2m_attention");
    const int64_t blocks = n.B * n.heads * ceil_div(n.P, p.tp);
    TORCH_CHECK_VALUE(blocks <= kMaxGrid, "x: too large for the CUDA kernel");
    const size_t smem = sizeof(acc_t) * forward_smem(p.mt, p.tp, p.D);
    MF_LAUNCH(dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, ctx.stream, forward_kernel<scalar_t>)(
        xc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
        y.mutable_data_ptr<scalar_t>(), p);
    MF_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> f2m_attention_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  const Inputs n = check_inputs(x, k, v, heads);
  check_rank(grad_y, "grad_y", 4, "[B, C, H, W]");
  check_same(x, grad_y, "x", "grad_y");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "grad_y: expected the shape of x ", x.sizes(), ", got ",
                    grad_y.sizes());
  const at::MemoryFormat format = output_format(x);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor gk = at::empty({n.B, n.M, n.C}, k.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gv = at::empty({n.B, n.M, n.C}, v.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0 || n.M == 0) {  // no positions or no tokens: grad_x = grad_y, the sums are empty
    gx.copy_(grad_y);
    gk.zero_();
    gv.zero_();
    return {gx, gk, gv};
  }
  const DeviceContext ctx(x);
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor gyc = grad_y.contiguous(format);
  const at::Tensor kc = k.contiguous();
  const at::Tensor vc = v.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "f2m_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::TensorOptions opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    Params p = make_params<acc_t>(n, cl, [](int64_t mt, int64_t tp, int64_t D) { return backward_smem(mt, tp, D); },
                                  "f2m_attention_backward");
    p.splits = choose_splits(n.P, p.tp, n.B * n.heads * p.chunks, ctx.sms, p.split_len);
    TORCH_CHECK_VALUE(n.B * n.heads * p.chunks * p.splits <= kMaxGrid, "x: too large for the CUDA kernel");

    at::Tensor lse, rowdot, gx_buffer;
    acc_t* gx_acc = nullptr;
    if (p.chunks > 1) {
      // Statistics over all tokens first (own tiling: it holds two token arrays fewer).
      const Params ps = make_params<acc_t>(n, cl, [](int64_t mt, int64_t tp, int64_t D) { return stats_smem(mt, tp, D); },
                                           "f2m_attention_backward");
      lse = at::empty({n.B, n.heads, n.P}, opts);
      rowdot = at::empty({n.B, n.heads, n.P}, opts);
      const int64_t blocks = n.B * n.heads * ceil_div(n.P, ps.tp);
      TORCH_CHECK_VALUE(blocks <= kMaxGrid, "x: too large for the CUDA kernel");
      const size_t smem = sizeof(acc_t) * stats_smem(ps.mt, ps.tp, ps.D);
      MF_LAUNCH(dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, ctx.stream, stats_kernel<scalar_t>)(
          gyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(),
          vc.const_data_ptr<scalar_t>(), ps, lse.mutable_data_ptr<acc_t>(), rowdot.mutable_data_ptr<acc_t>());
      MF_LAUNCH_CHECK();
      // grad_x starts as grad_y; every chunk adds its s dS k.
      if (std::is_same<scalar_t, acc_t>::value) {
        gx.copy_(gyc);
        gx_acc = reinterpret_cast<acc_t*>(gx.mutable_data_ptr());
      } else {
        gx_buffer = at::empty(x.sizes(), opts.memory_format(format));
        gx_buffer.copy_(gyc);
        gx_acc = gx_buffer.mutable_data_ptr<acc_t>();
      }
    }
    at::Tensor pgk = at::empty({p.splits, n.B, n.M, n.C}, opts);
    at::Tensor pgv = at::empty({p.splits, n.B, n.M, n.C}, opts);
    const size_t smem = sizeof(acc_t) * backward_smem(p.mt, p.tp, p.D);
    MF_LAUNCH(dim3(static_cast<unsigned>(n.B * n.heads * p.chunks * p.splits)), dim3(kThreads), smem, ctx.stream,
              backward_kernel<scalar_t>)(
        gyc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), kc.const_data_ptr<scalar_t>(),
        vc.const_data_ptr<scalar_t>(), lse.defined() ? lse.const_data_ptr<acc_t>() : nullptr,
        rowdot.defined() ? rowdot.const_data_ptr<acc_t>() : nullptr, p, gx.mutable_data_ptr<scalar_t>(), gx_acc,
        pgk.mutable_data_ptr<acc_t>(), pgv.mutable_data_ptr<acc_t>());
    MF_LAUNCH_CHECK();
    if (gx_buffer.defined()) gx.copy_(gx_buffer);
    sum_splits<scalar_t, acc_t>(pgk, gk, p.splits, static_cast<acc_t>(p.scale), ctx);
    sum_splits<scalar_t, acc_t>(pgv, gv, p.splits, acc_t(1), ctx);
  });
  return {gx, gk, gv};
}

}  // namespace
}  // namespace cuda_kernels
}  // namespace mf_kernels

#ifndef MF_EMULATE
TORCH_LIBRARY_IMPL(mf_kernels, CUDA, m) {
  m.impl("f2m_attention", &mf_kernels::cuda_kernels::f2m_attention_cuda);
  m.impl("f2m_attention_backward", &mf_kernels::cuda_kernels::f2m_attention_backward_cuda);
}
#endif

// Dynamic ReLU on CUDA, forward and backward.
//
//   y[b,c,p] = max_k (slope[b,c,k] * x[b,c,p] + intercept[b,c,k])
//
// Backward, with T the set of pieces that attain the max at (b,c,p) and n = |T| (ties split the
// gradient evenly, as torch.amax does):
//   grad_x[b,c,p]         = g * sum_{k in T} slope[b,c,k] / n
//   grad_slope[b,c,k]     = sum_p [k in T] g * x[b,c,p] / n
//   grad_intercept[b,c,k] = sum_p [k in T] g / n
//
// Forward: a grid-stride elementwise kernel; each thread handles V consecutive elements (one
// 16-byte load and store when the sizes and pointers allow, else V = 1). Contiguous NCHW: the V
// elements share one (b,c), coefficients at [B,C,K]; channels_last: the V elements are V
// consecutive channels, coefficients transposed to [B,K,C] so that reads are unit-stride.
// Backward: grad_x as the forward; the sums over positions go to fp32 per-block partials
// [splits, B, C, K] reduced in a fixed order by sum_splits_kernel (deterministic). NCHW: one
// block per (plane b*C+c, position split); channels_last: a (channel tile, batch x position split)
// grid of TX x TY blocks, threads over channels, the block's sums reduced over positions by warp
// shuffles and then one shared-memory pass per 16 sums. Pieces are accumulated KMAX at a time (KMAX = 2
// or 4 registers per sum); K > 4 takes ceil(K/4) passes. Pieces are computed without fma
// contraction (__fmul_rn/__fadd_rn), so forward and backward agree bit for bit on which pieces tie,
// and fp32 matches the reference's rounding.
#include <torch/library.h>

#include "common.cuh"

namespace mf_kernels {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 256;
// Sums the channels_last backward reduces across warps per round of shared memory.
constexpr int kReduceRound = 16;

struct Shapes {
  int64_t B, C, P, K;
};

Shapes check_inputs(const at::Tensor& x, const at::Tensor& slope,
                    const c10::optional<at::Tensor>& intercept) {
  check_dynamic_relu_args(x, slope, intercept);
  return {x.size(0), x.size(1), x.size(2) * x.size(3), slope.size(2)};
}

// One piece, rounded like the reference (product, then sum; never fused).
__device__ __forceinline__ float piece(float s, float v, float t) {
  return __fadd_rn(__fmul_rn(s, v), t);
}
__device__ __forceinline__ double piece(double s, double v, double t) {
  return __dadd_rn(__dmul_rn(s, v), t);
}

// NaN-propagating max, so a NaN piece yields NaN as torch.amax does.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (b > a || b != b) ? b : a;
}

// The coefficients of one element: slope[k] = s[k * ks], intercept[k] = t[k * ks] (t may be null).
template <typename acc_t>
__device__ __forceinline__ acc_t piece_k(const acc_t* s, const acc_t* t, int64_t ks, int k, acc_t v) {
  return piece(s[k * ks], v, t != nullptr ? t[k * ks] : acc_t(0));
}

template <typename acc_t>
__device__ __forceinline__ acc_t forward_element(acc_t v, const acc_t* s, const acc_t* t,
                                                 int64_t ks, int K) {
  acc_t best = piece_k(s, t, ks, 0, v);
  for (int k = 1; k < K; ++k) best = nan_max(best, piece_k(s, t, ks, k, v));
  return best;
}

// One element's backward: returns grad_x; adds the element's share to the sums of pieces
// k0 .. k0+KMAX-1.
template <typename acc_t, int KMAX>
__device__ __forceinline__ acc_t backward_element(acc_t v, acc_t g, const acc_t* s, const acc_t* t,
                                                  int64_t ks, int K, int k0, acc_t (&gs)[KMAX],
                                                  acc_t (&gt)[KMAX]) {
  const acc_t best = forward_element(v, s, t, ks, K);
  int ties = 0;
  acc_t slope_sum = 0;
  for (int k = 0; k < K; ++k) {
    if (piece_k(s, t, ks, k, v) == best) {
      ++ties;
      slope_sum += s[k * ks];
    }
  }
  if (ties == 0) return acc_t(0);  // NaN: no piece attains the max; no gradient flows
  const acc_t share = g / static_cast<acc_t>(ties);
#pragma unroll
  for (int kk = 0; kk < KMAX; ++kk) {
    const int k = k0 + kk;
    if (k < K && piece_k(s, t, ks, k, v) == best) {
      gs[kk] += share * v;
      gt[kk] += share;
    }
  }
  return share * slope_sum;
}

// ---------------------------------------------------------------------------------------------
// Forward. groups = numel / V. NCHW: coefficients [B*C, K] (ks = 1); channels_last: [B, K, C]
// (ks = C).
template <typename scalar_t, int V, bool CL>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                   const at::opmath_type<scalar_t>* __restrict__ s,
                   const at::opmath_type<scalar_t>* __restrict__ t, int64_t groups, int64_t C,
                   int64_t P, int K) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = g * V;  // first element
    int64_t base, ks;
    if (CL) {
      const int64_t b = e / (P * C), c = e % C;  // the V elements: channels c .. c+V-1
      base = b * K * C + c;
      ks = C;
    } else {
      base = (e / P) * K;  // the V elements share the plane e / P
      ks = 1;
    }
    const Vec<scalar_t, V> in = *reinterpret_cast<const Vec<scalar_t, V>*>(x + e);
    Vec<scalar_t, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t o = base + (CL ? j : 0);
      out.val[j] = static_cast<scalar_t>(forward_element(
          static_cast<acc_t>(in.val[j]), s + o, t != nullptr ? t + o : nullptr, ks, K));
    }
    *reinterpret_cast<Vec<scalar_t, V>*>(y + e) = out;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, contiguous NCHW. grid = (B*C planes, splits); block = 1-D, a multiple of 32 threads.
// Partials part_s/part_t: [splits, B*C, K]. split_len is a multiple of V and P % V == 0, so no
// vector straddles a plane or a split. grad_x is written by the k0 == 0 pass only.
template <typename scalar_t, int V, int KMAX>
__global__ void __launch_bounds__(kThreads)
    backward_nchw_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                         scalar_t* __restrict__ gx, const at::opmath_type<scalar_t>* __restrict__ s,
                         const at::opmath_type<scalar_t>* __restrict__ t,
                         at::opmath_type<scalar_t>* __restrict__ part_s,
                         at::opmath_type<scalar_t>* __restrict__ part_t, int64_t BC, int64_t P,
                         int K, int k0, int64_t split_len) {
  using acc_t = at::opmath_type<scalar_t>;
  MF_DYNAMIC_SMEM(acc_t, red);  // [warps][2 * KMAX]
  const int64_t bc = blockIdx.x, split = blockIdx.y;
  const int64_t p_begin = split * split_len, p_end = std::min(P, p_begin + split_len);
  const acc_t* sk = s + bc * K;
  const acc_t* tk = t != nullptr ? t + bc * K : nullptr;
  acc_t gs[KMAX], gt[KMAX];
#pragma unroll
  for (int kk = 0; kk < KMAX; ++kk) gs[kk] = gt[kk] = acc_t(0);
  for (int64_t p = p_begin + static_cast<int64_t>(threadIdx.x) * V; p < p_end;
       p += static_cast<int64_t>(blockDim.x) * V) {
    const int64_t e = bc * P + p;
    const Vec<scalar_t, V> xv = *reinterpret_cast<const Vec<scalar_t, V>*>(x + e);
    const Vec<scalar_t, V> gv = *reinterpret_cast<const Vec<scalar_t, V>*>(gy + e);
    Vec<scalar_t, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.val[j] = static_cast<scalar_t>(backward_element<acc_t, KMAX>(
          static_cast<acc_t>(xv.val[j]), static_cast<acc_t>(gv.val[j]), sk, tk, 1, K, k0, gs, gt));
    }
    if (k0 == 0) *reinterpret_cast<Vec<scalar_t, V>*>(gx + e) = out;
  }
  // Block reduction: warps, then the warps' sums.
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
#pragma unroll
  for (int kk = 0; kk < KMAX; ++kk) {
    const acc_t a = warp_sum(gs[kk]);
    const acc_t b = warp_sum(gt[kk]);
    if (lane == 0) {
      red[warp * 2 * KMAX + kk] = a;
      red[warp * 2 * KMAX + KMAX + kk] = b;
    }
  }
  __syncthreads();
  if (threadIdx.x < 2 * KMAX) {
    const int slot = threadIdx.x, kk = slot % KMAX, k = k0 + kk;
    acc_t sum = 0;
    for (int w = 0; w < warps; ++w) sum += red[w * 2 * KMAX + slot];
    if (k < K) (slot < KMAX ? part_s : part_t)[(split * BC + bc) * K + k] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, channels_last. block = (TX, TY), TX * TY = kThreads, TX a power of two <= 32:
// threadIdx.x over vectors of V channels (unit stride), threadIdx.y over positions. grid =
// (B * splits, channel tiles of TX * V channels). Coefficients [B, K, C]; partials
// [splits, B, C, K]. C % V == 0. Shared memory: [warps][kRound][TX] sums. Launch bounds with
// one resident block: without it ptxas aimed at more blocks per SM and spilled a register.
template <typename scalar_t, int V, int KMAX>
__global__ void __launch_bounds__(kThreads, 1)
    backward_cl_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ x,
                       scalar_t* __restrict__ gx, const at::opmath_type<scalar_t>* __restrict__ s,
                       const at::opmath_type<scalar_t>* __restrict__ t,
                       at::opmath_type<scalar_t>* __restrict__ part_s,
                       at::opmath_type<scalar_t>* __restrict__ part_t, int64_t B, int64_t C,
                       int64_t P, int K, int k0, int64_t split_len, int64_t splits) {
  using acc_t = at::opmath_type<scalar_t>;
  MF_DYNAMIC_SMEM(acc_t, red);  // [warps][kRound][TX]
  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  // 32-bit division: a 64-bit one is a subroutine call, around which registers spill.
  const int64_t b = blockIdx.x / static_cast<unsigned>(splits);
  const int64_t split = blockIdx.x % static_cast<unsigned>(splits);
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * TX + tx) * V;  // this thread's channels
  const bool active = c0 < C;
  const int64_t p_begin = split * split_len, p_end = std::min(P, p_begin + split_len);
  acc_t gs[V][KMAX], gt[V][KMAX];
#pragma unroll
  for (int j = 0; j < V; ++j) {
#pragma unroll
    for (int kk = 0; kk < KMAX; ++kk) gs[j][kk] = gt[j][kk] = acc_t(0);
  }
  if (active) {
    const acc_t* sb = s + b * K * C + c0;
    const acc_t* tb = t != nullptr ? t + b * K * C + c0 : nullptr;
    for (int64_t p = p_begin + ty; p < p_end; p += TY) {
      const int64_t e = (b * P + p) * C + c0;
      const Vec<scalar_t, V> xv = *reinterpret_cast<const Vec<scalar_t, V>*>(x + e);
      const Vec<scalar_t, V> gv = *reinterpret_cast<const Vec<scalar_t, V>*>(gy + e);
      Vec<scalar_t, V> out;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        out.val[j] = static_cast<scalar_t>(backward_element<acc_t, KMAX>(
            static_cast<acc_t>(xv.val[j]), static_cast<acc_t>(gv.val[j]), sb + j,
            tb != nullptr ? tb + j : nullptr, C, K, k0, gs[j], gt[j]));
      }
      if (k0 == 0) *reinterpret_cast<Vec<scalar_t, V>*>(gx + e) = out;
    }
  }
  // Reduce the 2 * V * KMAX sums over threadIdx.y: first inside each warp, whose lanes tx,
  // tx + TX, ... hold the same channels, with shuffles (no barrier); then across the warps
  // through shared memory, kRound sums at a time: two barriers per round (at most four rounds)
  // instead of two per sum.
  constexpr int kSums = 2 * V * KMAX;
  constexpr int kRound = kSums < kReduceRound ? kSums : kReduceRound;
  const int tid = ty * TX + tx, nthreads = TX * TY;
  const int lane = tid % kWarp, warp = tid / kWarp, warps = nthreads / kWarp;
#pragma unroll
  for (int r0 = 0; r0 < kSums; r0 += kRound) {
#pragma unroll
    for (int r = 0; r < kRound; ++r) {
      constexpr int kPerPiece = V * KMAX;
      const int j = r0 + r, jv = (j % kPerPiece) / KMAX, kk = j % KMAX;
      acc_t v = j < kPerPiece ? gs[jv][kk] : gt[jv][kk];
      for (int o = kWarp / 2; o >= TX; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane < TX) red[(warp * kRound + r) * TX + lane] = v;  // lane == tx: the warp's sum
    }
    __syncthreads();
    for (int i = tid; i < kRound * TX; i += nthreads) {
      const int r = i / TX, col = i - r * TX, j = r0 + r;
      const int jv = (j % (V * KMAX)) / KMAX, k = k0 + j % KMAX;
      const int64_t c = (static_cast<int64_t>(blockIdx.y) * TX + col) * V + jv;
      if (c < C && k < K) {
        acc_t sum = 0;
        for (int w = 0; w < warps; ++w) sum += red[(w * kRound + r) * TX + col];
        (j < V * KMAX ? part_s : part_t)[((split * B + b) * C + c) * K + k] = sum;
      }
    }
    __syncthreads();  // the next round overwrites red
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

// Coefficients in opmath precision: [B, C, K] for NCHW, [B, K, C] for channels_last.
at::Tensor coefficient_table(const at::Tensor& t, at::ScalarType acc, bool cl) {
  const at::Tensor c = t.to(acc);
  return cl ? c.transpose(1, 2).contiguous() : c.contiguous();
}

template <typename scalar_t, int V, bool CL>
void launch_forward(const at::Tensor& x, at::Tensor& y, const at::Tensor& s, const at::Tensor& t,
                    const Shapes& n, const DeviceContext& ctx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t groups = x.numel() / V;
  MF_LAUNCH(dim3(grid_for(groups, kThreads, ctx.sms)), dim3(kThreads), 0, ctx.stream,
            forward_kernel<scalar_t, V, CL>)(
      x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), s.const_data_ptr<acc_t>(),
      t.defined() ? t.const_data_ptr<acc_t>() : nullptr, groups, n.C, n.P,
      static_cast<int>(n.K));
  MF_LAUNCH_CHECK();
}

at::Tensor dynamic_relu_cuda(const at::Tensor& x, const at::Tensor& slope,
                             const c10::optional<at::Tensor>& intercept) {
  const Shapes n = check_inputs(x, slope, intercept);
  TORCH_CHECK_VALUE(n.K <= std::numeric_limits<int>::max(), "slope: too many pieces, K = ", n.K);
  const at::MemoryFormat format = output_format(x);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(format));
  if (y.numel() == 0) return y;
  const DeviceContext ctx(x);
  const at::Tensor xc = x.contiguous(format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_relu_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor s = coefficient_table(slope, acc, cl);
    const at::Tensor t = intercept.has_value() ? coefficient_table(*intercept, acc, cl) : at::Tensor();
    const bool vec = (cl ? n.C : n.P) % kVec == 0 && aligned16(xc.const_data_ptr()) &&
                     aligned16(y.const_data_ptr());
    if (cl) {
      if (vec) launch_forward<scalar_t, kVec, true>(xc, y, s, t, n, ctx);
      else launch_forward<scalar_t, 1, true>(xc, y, s, t, n, ctx);
    } else {
      if (vec) launch_forward<scalar_t, kVec, false>(xc, y, s, t, n, ctx);
      else launch_forward<scalar_t, 1, false>(xc, y, s, t, n, ctx);
    }
  });
  return y;
}

// The pieces k0 .. k0+KMAX-1 of the backward (and grad_x when k0 == 0).
template <typename scalar_t, int V, int KMAX>
void launch_backward(const at::Tensor& gy, const at::Tensor& x, at::Tensor& gx, const at::Tensor& s,
                     const at::Tensor& t, at::Tensor& part_s, at::Tensor& part_t, const Shapes& n,
                     bool cl, int k0, const DeviceContext& ctx) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t* tp = t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
  const int K = static_cast<int>(n.K);
  if (!cl) {
    const int64_t splits = part_s.size(0);
    const int64_t split_len = ceil_div(ceil_div(n.P, splits), V) * V;
    const int threads = static_cast<int>(
        std::min<int64_t>(kThreads, std::max<int64_t>(kWarp, ceil_div(ceil_div(n.P, V), kWarp) * kWarp)));
    const size_t smem = sizeof(acc_t) * (threads / kWarp) * 2 * KMAX;
    MF_LAUNCH(dim3(static_cast<unsigned>(n.B * n.C), static_cast<unsigned>(splits)), dim3(threads),
              smem, ctx.stream, backward_nchw_kernel<scalar_t, V, KMAX>)(
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
        s.const_data_ptr<acc_t>(), tp, part_s.mutable_data_ptr<acc_t>(),
        part_t.mutable_data_ptr<acc_t>(), n.B * n.C, n.P, K, k0, split_len);
    MF_LAUNCH_CHECK();
  } else {
    const int64_t splits = part_s.size(0);
    const int64_t split_len = ceil_div(n.P, splits);
    int tx = 1;
    while (tx < kWarp && tx * V < n.C) tx *= 2;
    const int ty = kThreads / tx;
    const int64_t tiles = ceil_div(n.C, static_cast<int64_t>(tx) * V);
    // [warps][kRound][TX] partial sums of one round.
    const size_t smem = sizeof(acc_t) * (kThreads / kWarp) * std::min(2 * V * KMAX, kReduceRound) * tx;
    MF_LAUNCH(dim3(static_cast<unsigned>(n.B * splits), static_cast<unsigned>(tiles)), dim3(tx, ty),
              smem, ctx.stream, backward_cl_kernel<scalar_t, V, KMAX>)(
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
        s.const_data_ptr<acc_t>(), tp, part_s.mutable_data_ptr<acc_t>(),
        part_t.mutable_data_ptr<acc_t>(), n.B, n.C, n.P, K, k0, split_len, splits);
    MF_LAUNCH_CHECK();
  }
}

// Number of position splits of the backward: about four blocks per SM, each thread still
// handling at least four vectors (NCHW) or rows (channels_last).
int64_t backward_splits(const Shapes& n, bool cl, int V, int sms) {
  const int64_t target = 4 * static_cast<int64_t>(sms);
  int64_t blocks, most;
  if (!cl) {
    blocks = n.B * n.C;
    most = ceil_div(n.P, static_cast<int64_t>(kThreads) * V * 4);
  } else {
    int tx = 1;
    while (tx < kWarp && tx * V < n.C) tx *= 2;
    blocks = n.B * ceil_div(n.C, static_cast<int64_t>(tx) * V);
    most = ceil_div(n.P, static_cast<int64_t>(kThreads / tx) * 4);
  }
  const int64_t splits = std::max<int64_t>(1, std::min(most, ceil_div(target, blocks)));
  // As launch_backward splits: every split non-empty.
  const int64_t len = cl ? ceil_div(n.P, splits) : ceil_div(ceil_div(n.P, splits), V) * V;
  return ceil_div(n.P, len);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_relu_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& slope,
    const c10::optional<at::Tensor>& intercept) {
  const Shapes n = check_inputs(x, slope, intercept);
  TORCH_CHECK_VALUE(n.K <= std::numeric_limits<int>::max(), "slope: too many pieces, K = ", n.K);
  check_rank(grad_y, "grad_y", 4, "[B, C, H, W]");
  check_same(x, grad_y, "x", "grad_y");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "grad_y: expected the shape of x ", x.sizes(),
                    ", got ", grad_y.sizes());
  const at::MemoryFormat format = output_format(x);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor gs = at::empty(slope.sizes(), slope.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gt = at::empty(slope.sizes(), slope.options().memory_format(at::MemoryFormat::Contiguous));
  if (gx.numel() == 0) {
    gs.zero_();
    gt.zero_();
    return {gx, gs, gt};
  }
  const DeviceContext ctx(x);
  TORCH_CHECK_VALUE(n.B * n.C <= kMaxGrid, "x: B*C = ", n.B * n.C, " is too large for the CUDA kernel");
  const at::Tensor xc = x.contiguous(format);
  const at::Tensor gyc = grad_y.contiguous(format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_relu_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor s = coefficient_table(slope, acc, cl);
    const at::Tensor t = intercept.has_value() ? coefficient_table(*intercept, acc, cl) : at::Tensor();
    const bool vec = (cl ? n.C : n.P) % kVec == 0 && aligned16(xc.const_data_ptr()) &&
                     aligned16(gyc.const_data_ptr()) && aligned16(gx.const_data_ptr());
    const int V = vec ? kVec : 1;
    const int64_t splits = backward_splits(n, cl, V, ctx.sms);
    at::Tensor part_s = at::empty({splits, n.B, n.C, n.K}, x.options().dtype(acc));
    at::Tensor part_t = at::empty({splits, n.B, n.C, n.K}, x.options().dtype(acc));
    for (int k0 = 0; k0 < n.K; k0 += 4) {
      if (n.K <= 2) {
        if (vec) launch_backward<scalar_t, kVec, 2>(gyc, xc, gx, s, t, part_s, part_t, n, cl, k0, ctx);
        else launch_backward<scalar_t, 1, 2>(gyc, xc, gx, s, t, part_s, part_t, n, cl, k0, ctx);
      } else {
        if (vec) launch_backward<scalar_t, kVec, 4>(gyc, xc, gx, s, t, part_s, part_t, n, cl, k0, ctx);
        else launch_backward<scalar_t, 1, 4>(gyc, xc, gx, s, t, part_s, part_t, n, cl, k0, ctx);
      }
    }
    sum_splits<scalar_t, acc_t>(part_s, gs, splits, acc_t(1), ctx);
    sum_splits<scalar_t, acc_t>(part_t, gt, splits, acc_t(1), ctx);
  });
  return {gx, gs, gt};
}

}  // namespace
}  // namespace cuda_kernels
}  // namespace mf_kernels

#ifndef MF_EMULATE
TORCH_LIBRARY_IMPL(mf_kernels, CUDA, m) {
  m.impl("dynamic_relu", &mf_kernels::cuda_kernels::dynamic_relu_cuda);
  m.impl("dynamic_relu_backward", &mf_kernels::cuda_kernels::dynamic_relu_backward_cuda);
}
#endif

// Dynamic ReLU on the CPU, forward and backward.
//
//   y[b,c,p] = max_k (slope[b,c,k] * x[b,c,p] + intercept[b,c,k])
//
// Backward, with T the set of pieces that attain the max at (b,c,p) and n = |T| (ties split the
// gradient evenly, as torch.amax / torch.maximum do):
//   grad_x[b,c,p]       = g * sum_{k in T} slope[b,c,k] / n
//   grad_slope[b,c,k]   = sum_p [k in T] g * x[b,c,p] / n
//   grad_intercept[b,c,k] = sum_p [k in T] g / n
//
// Contiguous NCHW is processed plane by plane (one (b,c) pair per task, coefficients in
// registers); channels_last row by row (one (b,p) pair per task, coefficients in a per-batch
// [K, C] table so the inner loop over c is unit-stride). Any other layout is made contiguous
// first. Arithmetic is in at::opmath_type (fp32 for fp16/bf16, fp64 for fp64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../checks.h"
#include "attention_common.h"  // use_avx2(): the run-time instruction-set choice

namespace mf_kernels {
namespace {

// Positions per task when reducing over channels_last rows: large enough to amortise the
// partial-sum buffers, small enough to split a 56x56 map across threads.
constexpr int64_t kRowsPerChunk = 1024;

// NaN-propagating max, so a NaN piece yields NaN as torch.amax does.
template <typename T>
inline T nan_max(T a, T b) {
  return (b > a || b != b) ? b : a;
}

// The authors' form (K = 2, no intercept) in fp32 is the hot loop of the model. The build has
// no -march flag, so it is compiled twice: for the baseline (SSE2, 4 lanes) and, as a clone,
// for AVX2 (8 lanes); use_avx2() picks one at run time. Both are plain loops that GCC
// vectorises (the NaN-propagating max becomes a compare and a blend).
#define MF_K2_LOOPS(ATTR, SUFFIX)                                                               \
  ATTR void k2_plane_##SUFFIX(const float* x, float* y, int64_t n, float a1, float a2) {        \
    for (int64_t i = 0; i < n; ++i) y[i] = nan_max(a1 * x[i], a2 * x[i]);                      \
  }                                                                                             \
  ATTR void k2_rows_##SUFFIX(const float* x, float* y, int64_t rows, int64_t n,                \
                             const float* a1, const float* a2) {                                \
    for (int64_t r = 0; r < rows; ++r, x += n, y += n) {                                        \
      for (int64_t i = 0; i < n; ++i) y[i] = nan_max(a1[i] * x[i], a2[i] * x[i]);              \
    }                                                                                           \
  }
MF_K2_LOOPS(, base)
#if MF_KERNELS_HAVE_AVX2_CLONE
MF_K2_LOOPS(__attribute__((target("avx2,fma"))), avx2)
#define MF_K2(fn, ...) (attention::use_avx2() ? fn##_avx2(__VA_ARGS__) : fn##_base(__VA_ARGS__))
#else
#define MF_K2(fn, ...) fn##_base(__VA_ARGS__)
#endif

struct Shapes {
  int64_t B, C, P, K;
};

Shapes check_inputs(const at::Tensor& x, const at::Tensor& slope,
                    const c10::optional<at::Tensor>& intercept) {
  check_dynamic_relu_args(x, slope, intercept);
  return {x.size(0), x.size(1), x.size(2) * x.size(3), slope.size(2)};
}

// Coefficients as a dense [B, C, K] table in opmath precision (zeros for a missing intercept).
at::Tensor coefficients(const at::Tensor& t, at::ScalarType opmath) {
  return t.to(opmath).contiguous();
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& s, const at::Tensor& t, at::Tensor& y,
                    const Shapes& n, bool channels_last, bool has_intercept) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const opmath_t* sp = s.const_data_ptr<opmath_t>();
  const opmath_t* tp = t.const_data_ptr<opmath_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  const int64_t K = n.K;
  if (!channels_last) {
    at::parallel_for(0, n.B * n.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const scalar_t* xr = xp + bc * n.P;
        scalar_t* yr = yp + bc * n.P;
        const opmath_t* sk = sp + bc * K;
        const opmath_t* tk = tp + bc * K;
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (K == 2 && !has_intercept) {
            MF_K2(k2_plane, xr, yr, n.P, sk[0], sk[1]);
            continue;
          }
        }
        if (K == 2 && !has_intercept) {  // the authors' form: a tight, vectorisable loop
          const opmath_t a1 = sk[0], a2 = sk[1];
          for (int64_t p = 0; p < n.P; ++p) {
            const opmath_t v = static_cast<opmath_t>(xr[p]);
            yr[p] = static_cast<scalar_t>(nan_max(a1 * v, a2 * v));
          }
          continue;
        }
        for (int64_t p = 0; p < n.P; ++p) {
          const opmath_t v = static_cast<opmath_t>(xr[p]);
          opmath_t best = sk[0] * v + tk[0];
          for (int64_t k = 1; k < K; ++k) best = nan_max(best, sk[k] * v + tk[k]);
          yr[p] = static_cast<scalar_t>(best);
        }
      }
    });
    return;
  }
  // channels_last: transpose the coefficients to [B, K, C] so that c is the unit stride.
  const at::Tensor s_t = s.transpose(1, 2).contiguous();
  // The K = 2 path without intercepts reads no intercepts; every other path does.
  const bool reads_intercepts = has_intercept || K != 2;
  const at::Tensor t_t = reads_intercepts ? t.transpose(1, 2).contiguous() : s_t;
  const opmath_t* st = s_t.const_data_ptr<opmath_t>();
  const opmath_t* tt = t_t.const_data_ptr<opmath_t>();
  at::parallel_for(0, n.B * n.P, 16, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (K == 2 && !has_intercept) {  // whole runs of rows of one sample per call
        for (int64_t bp = begin; bp < end;) {
          const int64_t b = bp / n.P, stop = std::min(end, (b + 1) * n.P);
          const float* sb = st + b * 2 * n.C;
          MF_K2(k2_rows, xp + bp * n.C, yp + bp * n.C, stop - bp, n.C, sb, sb + n.C);
          bp = stop;
        }
        return;
      }
    }
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / n.P;
      const scalar_t* xr = xp + bp * n.C;
      scalar_t* yr = yp + bp * n.C;
      const opmath_t* sb = st + b * K * n.C;
      const opmath_t* tb = tt + b * K * n.C;
      if (K == 2 && !has_intercept) {  // the authors' form: unit-stride, vectorisable
        const opmath_t* a1 = sb;
        const opmath_t* a2 = sb + n.C;
        for (int64_t c = 0; c < n.C; ++c) {
          const opmath_t v = static_cast<opmath_t>(xr[c]);
          yr[c] = static_cast<scalar_t>(nan_max(a1[c] * v, a2[c] * v));
        }
        continue;
      }
      for (int64_t c = 0; c < n.C; ++c) {
        const opmath_t v = static_cast<opmath_t>(xr[c]);
        opmath_t best = sb[c] * v + tb[c];
        for (int64_t k = 1; k < K; ++k) best = nan_max(best, sb[k * n.C + c] * v + tb[k * n.C + c]);
        yr[c] = static_cast<scalar_t>(best);
      }
    }
  });
}

// One element's backward: returns grad_x, adds into the per-(b,c) slope/intercept sums.
template <typename opmath_t>
inline opmath_t backward_element(opmath_t v, opmath_t g, const opmath_t* sk, const opmath_t* tk,
                                 int64_t K, int64_t stride, opmath_t* gs, opmath_t* gt) {
  opmath_t best = sk[0] * v + tk[0];
  for (int64_t k = 1; k < K; ++k) best = nan_max(best, sk[k * stride] * v + tk[k * stride]);
  int64_t ties = 0;
  opmath_t slope_sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    if (sk[k * stride] * v + tk[k * stride] == best) {
      ++ties;
      slope_sum += sk[k * stride];
    }
  }
  if (ties == 0) return slope_sum;  // NaN: no piece attains the max; no gradient flows
  const opmath_t share = g / static_cast<opmath_t>(ties);
  for (int64_t k = 0; k < K; ++k) {
    if (sk[k * stride] * v + tk[k * stride] == best) {
      gs[k * stride] += share * v;
      gt[k * stride] += share;
    }
  }
  return share * slope_sum;
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& s,
                     const at::Tensor& t, at::Tensor& gx, at::Tensor& gs_out, at::Tensor& gt_out,
                     const Shapes& n, bool channels_last) {
  using opmath_t = at::opmath_type<scalar_t>;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gp = gy.const_data_ptr<scalar_t>();
  const opmath_t* sp = s.const_data_ptr<opmath_t>();
  const opmath_t* tp = t.const_data_ptr<opmath_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  const int64_t K = n.K;
  if (!channels_last) {
    opmath_t* gsp = gs_out.mutable_data_ptr<opmath_t>();
    opmath_t* gtp = gt_out.mutable_data_ptr<opmath_t>();
    at::parallel_for(0, n.B * n.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        for (int64_t p = 0; p < n.P; ++p) {
          const int64_t i = bc * n.P + p;
          gxp[i] = static_cast<scalar_t>(backward_element<opmath_t>(
              static_cast<opmath_t>(xp[i]), static_cast<opmath_t>(gp[i]), sp + bc * K,
              tp + bc * K, K, 1, gsp + bc * K, gtp + bc * K));
        }
      }
    });
    return;
  }
  // channels_last: chunks of rows, each with its own [K, C] partial sums, reduced afterwards.
  const at::Tensor s_t = s.transpose(1, 2).contiguous();  // [B, K, C]
  const at::Tensor t_t = t.transpose(1, 2).contiguous();
  const opmath_t* st = s_t.const_data_ptr<opmath_t>();
  const opmath_t* tt = t_t.const_data_ptr<opmath_t>();
  const int64_t chunks = (n.P + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<opmath_t> gs_part(n.B * chunks * K * n.C, 0), gt_part(gs_part.size(), 0);
  at::parallel_for(0, n.B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, chunk = task % chunks;
      const int64_t p_end = std::min(n.P, (chunk + 1) * kRowsPerChunk);
      opmath_t* gs = gs_part.data() + task * K * n.C;
      opmath_t* gt = gt_part.data() + task * K * n.C;
      for (int64_t p = chunk * kRowsPerChunk; p < p_end; ++p) {
        const int64_t row = (b * n.P + p) * n.C;
        for (int64_t c = 0; c < n.C; ++c) {
          gxp[row + c] = static_cast<scalar_t>(backward_element<opmath_t>(
              static_cast<opmath_t>(xp[row + c]), static_cast<opmath_t>(gp[row + c]),
              st + b * K * n.C + c, tt + b * K * n.C + c, K, n.C, gs + c, gt + c));
        }
      }
    }
  });
  // Reduce the chunks and transpose [B, K, C] back to [B, C, K].
  opmath_t* gsp = gs_out.mutable_data_ptr<opmath_t>();
  opmath_t* gtp = gt_out.mutable_data_ptr<opmath_t>();
  for (int64_t b = 0; b < n.B; ++b) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const opmath_t* gs = gs_part.data() + (b * chunks + chunk) * K * n.C;
      const opmath_t* gt = gt_part.data() + (b * chunks + chunk) * K * n.C;
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t c = 0; c < n.C; ++c) {
          gsp[(b * n.C + c) * K + k] += gs[k * n.C + c];
          gtp[(b * n.C + c) * K + k] += gt[k * n.C + c];
        }
      }
    }
  }
}

at::Tensor intercept_or_zeros(const at::Tensor& slope, const c10::optional<at::Tensor>& intercept,
                              at::ScalarType opmath) {
  return intercept.has_value() ? coefficients(*intercept, opmath)
                               : at::zeros(slope.sizes(), slope.options().dtype(opmath));
}

at::Tensor dynamic_relu_cpu(const at::Tensor& x, const at::Tensor& slope,
                            const c10::optional<at::Tensor>& intercept) {
  const Shapes n = check_inputs(x, slope, intercept);
  const at::MemoryFormat format = output_format(x);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(format));
  if (y.numel() == 0) return y;
  const at::Tensor xc = x.contiguous(format);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_relu", [&] {
    const auto opmath = c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value;
    const at::Tensor s = coefficients(slope, opmath);
    // Without an intercept the K = 2 paths read no intercepts: skip allocating zeros for them.
    const at::Tensor t = intercept.has_value() || n.K != 2
                             ? intercept_or_zeros(slope, intercept, opmath) : s;
    forward_kernel<scalar_t>(xc, s, t, y, n, format == at::MemoryFormat::ChannelsLast,
                             intercept.has_value());
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_relu_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& slope,
    const c10::optional<at::Tensor>& intercept) {
  const Shapes n = check_inputs(x, slope, intercept);
  check_same(x, grad_y, "x", "grad_y");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "grad_y: expected the shape of x ", x.sizes(),
              ", got ", grad_y.sizes());
  const at::MemoryFormat format = output_format(x);
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor gs, gt;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_relu_bwd",
                                  [&] {
    const auto opmath = c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value;
    gs = at::zeros(slope.sizes(), slope.options().dtype(opmath));
    gt = at::zeros(slope.sizes(), slope.options().dtype(opmath));
    if (gx.numel() == 0) return;
    backward_kernel<scalar_t>(grad_y.contiguous(format), x.contiguous(format),
                              coefficients(slope, opmath),
                              intercept_or_zeros(slope, intercept, opmath), gx, gs, gt, n,
                              format == at::MemoryFormat::ChannelsLast);
  });
  return {gx, gs.to(slope.scalar_type()), gt.to(slope.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CPU, m) {
  m.impl("dynamic_relu", &dynamic_relu_cpu);
  m.impl("dynamic_relu_backward", &dynamic_relu_backward_cpu);
}

}  // namespace mf_kernels

// Dynamic ReLU on the CPU, forward and backward.
//
//   y[b,c,p] = max_k (slope[b,c,k] * x[b,c,p] + intercept[b,c,k])
//
// Backward, with T the set of pieces that attain the max at (b,c,p) and n = |T| (ties split the
// gradient evenly, as torch.amax / torch.maximum do):
//   grad_x[b,c,p]       = g * sum_{k in T} slope[b,c,k] / n
//   grad_slope[b,c,k]   = sum_p [k in T] g * x[b,c,p] / n
//   grad_intercept[b,c,k] = sum_p [k in T] g / n
// A NaN piece makes the max NaN and T empty: as in the reference's autograd (g / 0 * 0), the
// gradients that element touches are NaN. Without an intercept, grad_intercept is the gradient
// of a zero intercept.
//
// Contiguous NCHW is processed plane by plane (a range of (b,c) planes per thread, the
// coefficients broadcast into registers, the sums over the plane in vector registers).
// channels_last: the forward row by row; the backward in tasks of (sample, chunk of
// kRowsPerTask rows, group of channels), each also row by row, its sums in a [K, C] partial
// buffer per chunk, added up in chunk order afterwards. The chunks do not depend on the thread
// count (only the channel groups do, and they change no sum), so results are bitwise the same
// with any number of threads. Any other layout is made contiguous first. Arithmetic is in
// at::opmath_type (fp32 for fp16/bf16, fp64 for fp64). Threads only for tensors of more than
// kMinElementsPerThread elements per thread.
//
// The inner kernels (dynamic_relu_kernels.h) are vector code compiled for the baseline and, as
// a clone, for AVX2; attention::use_avx2() picks one at run time. They are branch-free: which
// piece wins depends on the sign of x, so a branch per element is mispredicted half the time
// (that, and one element at a time through memory-held sums, made the former backward ~100x
// slower than the forward).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "../checks.h"
#include "attention_common.h"  // use_avx2(), the vector helpers' prerequisites

namespace mf_kernels {
namespace {

// The kernels' template parameters as one type: storage type S, accumulation type T, KC pieces
// (0: any K, read at run time), kIcpt whether the pieces add an intercept.
template <typename S_, int KC_, bool kIcpt_>
struct Cfg {
  typedef S_ S;
  typedef at::opmath_type<S_> T;
  static constexpr int KC = KC_;
  static constexpr bool kIcpt = kIcpt_;
  static constexpr int pieces(int K) { return KC_ > 0 ? KC_ : K; }
};

#define MF_ATTENTION_KERNELS "dynamic_relu_kernels.h"
#include "attention_isa.h"  // isa_base / isa_avx2 builds of the kernels, MF_ISA_CALL

// channels_last backward tasks: rows many enough that the partial sums (one [K, C] pair per
// chunk) stay small next to the tensors, few enough that a 56x56 map splits across threads.
constexpr int64_t kRowsPerTask = 128;
// The narrowest channel group of a task (a multiple of every vector's lane count). Tasks split
// the channels only when (sample, row chunk) pairs are too few to share among the threads
// (batch 1 at 7x7: one chunk): a group's rows are runs of memory with gaps between them,
// which stream less well than whole rows.
constexpr int64_t kMinChannelsPerTask = 128;
// Tasks per thread aimed at, so that uneven tasks still balance.
constexpr int64_t kTasksPerThread = 4;
// channels_last coefficient tables have at least this many channels (the widest vector: 8
// fp32), zero-padded when C is smaller, so that every coefficient load is a whole vector.
constexpr int64_t kMinTableChannels = 8;
// Below this many elements per thread, threads cost more than they save.
constexpr int64_t kMinElementsPerThread = 16384;

int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(1, elements_per_item));
}

struct Shapes {
  int64_t B, C, P, K;
  int64_t Cpad() const { return std::max(C, kMinTableChannels); }
};

Shapes check_inputs(const at::Tensor& x, const at::Tensor& slope,
                    const c10::optional<at::Tensor>& intercept) {
  check_dynamic_relu_args(x, slope, intercept);
  return {x.size(0), x.size(1), x.size(2) * x.size(3), slope.size(2)};
}

// The specialised kernels: the authors' form (K = 2, no intercept), K = 2 and K = 3 with
// intercepts; any other K runs the run-time-K kernels. Only the authors' form reads no
// intercepts; the others get zeros when there are none.
template <typename scalar_t, typename Fn>
void dispatch_pieces(int64_t K, bool has_intercept, const Fn& fn) {
  if (K == 2 && !has_intercept) return fn(Cfg<scalar_t, 2, false>{});
  if (K == 2) return fn(Cfg<scalar_t, 2, true>{});
  if (K == 3) return fn(Cfg<scalar_t, 3, true>{});
  fn(Cfg<scalar_t, 0, true>{});
}

bool reads_intercepts(const Shapes& n, bool has_intercept) { return has_intercept || n.K != 2; }

// Coefficients in opmath precision: [B, C, K] for NCHW, [B, K, Cpad] (Shapes::Cpad) for
// channels_last. A missing intercept is zeros where the kernel reads it, else not built.
struct Tables {
  at::Tensor s, t;
};

at::Tensor table(const at::Tensor& coefficient, const Shapes& n, at::ScalarType opmath,
                 bool channels_last) {
  if (!channels_last) return coefficient.to(opmath).contiguous();
  if (n.Cpad() == n.C) return coefficient.to(opmath).transpose(1, 2).contiguous();
  at::Tensor padded = at::zeros({n.B, n.K, n.Cpad()}, coefficient.options().dtype(opmath));
  padded.narrow(2, 0, n.C).copy_(coefficient.transpose(1, 2));
  return padded;
}

Tables tables(const at::Tensor& slope, const c10::optional<at::Tensor>& intercept,
              const Shapes& n, at::ScalarType opmath, bool channels_last) {
  Tables r;
  r.s = table(slope, n, opmath, channels_last);
  if (intercept.has_value()) {
    r.t = table(*intercept, n, opmath, channels_last);
  } else if (reads_intercepts(n, false)) {
    r.t = at::zeros_like(r.s);
  } else {
    r.t = r.s;  // never read
  }
  return r;
}

at::Tensor dynamic_relu_cpu(const at::Tensor& x, const at::Tensor& slope,
                            const c10::optional<at::Tensor>& intercept) {
  const Shapes n = check_inputs(x, slope, intercept);
  const at::MemoryFormat format = output_format(x);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(format));
  if (y.numel() == 0) return y;
  const at::Tensor xc = x.contiguous(format);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const int K = static_cast<int>(n.K);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_relu", [&] {
    const auto opmath = c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value;
    const Tables c = tables(slope, intercept, n, opmath, channels_last);
    dispatch_pieces<scalar_t>(n.K, intercept.has_value(), [&](auto cfg) {
      using Config = decltype(cfg);
      using T = typename Config::T;
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      scalar_t* yp = y.mutable_data_ptr<scalar_t>();
      const T* sp = c.s.const_data_ptr<T>();
      const T* tp = c.t.const_data_ptr<T>();
      if (!channels_last) {
        at::parallel_for(0, n.B * n.C, grain(n.P), [&](int64_t begin, int64_t end) {
          MF_ISA_CALL(forward_planes<Config>, xp, yp, sp, tp, n.P, K, begin, end);
        });
      } else {
        at::parallel_for(0, n.B * n.P, grain(n.C), [&](int64_t begin, int64_t end) {
          MF_ISA_CALL(forward_rows<Config>, xp, yp, sp, tp, n.P, n.C, n.Cpad(), K, begin, end);
        });
      }
    });
  });
  return y;
}

// channels_last backward: tasks over (sample, row chunk, channel group), partial sums per row
// chunk [2 (slope, intercept), chunks, B, K, Cpad], then added up in chunk order into gs, gt
// ([B, C, K]).
template <class Config>
void backward_channels_last(const typename Config::S* xp, const typename Config::S* gp,
                            typename Config::S* gxp, const Tables& c, const Shapes& n,
                            at::Tensor& gs, at::Tensor& gt) {
  using T = typename Config::T;
  const int K = static_cast<int>(n.K);
  const int64_t chunks = (n.P + kRowsPerTask - 1) / kRowsPerTask;
  // Channel groups: a multiple of kMinChannelsPerTask channels each, the last one taking the
  // remainder (so that no group but a lone one is shorter than a vector). Only the split of
  // the channels depends on the thread count, and it changes no sum's order: the results do
  // not depend on the thread count.
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t wanted = (kTasksPerThread * threads + n.B * chunks - 1) / (n.B * chunks);
  const int64_t groups = std::max<int64_t>(1, std::min(wanted, n.C / kMinChannelsPerTask));
  const int64_t group_width =
      groups == 1 ? n.C : n.C / groups / kMinChannelsPerTask * kMinChannelsPerTask;
  const int64_t Cpad = n.Cpad();
  const int64_t part_size = chunks * n.B * n.K * Cpad;  // per sum
  at::Tensor part = at::empty({2 * part_size}, gs.options());
  T* part_s = part.mutable_data_ptr<T>();
  T* part_t = part_s + part_size;
  const T* sp = c.s.const_data_ptr<T>();
  const T* tp = c.t.const_data_ptr<T>();
  const int64_t task_elements = std::min(n.P, kRowsPerTask) * group_width;
  const int64_t tasks = n.B * chunks * groups;
  at::parallel_for(0, tasks, grain(task_elements), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t group = task % groups, chunk = task / groups % chunks;
      const int64_t b = task / groups / chunks;
      const int64_t offset = (chunk * n.B + b) * n.K * Cpad;
      MF_ISA_CALL(backward_rows<Config>, xp, gp, gxp, sp, tp, part_s + offset, part_t + offset,
                  n.P, n.C, Cpad, K, b, chunk * kRowsPerTask,
                  std::min(n.P, (chunk + 1) * kRowsPerTask), group * group_width,
                  group == groups - 1 ? n.C : (group + 1) * group_width);
    }
  });
  T* gsp = gs.mutable_data_ptr<T>();
  T* gtp = gt.mutable_data_ptr<T>();
  at::parallel_for(0, n.B * n.C, grain(chunks * n.K), [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / n.C, ch = bc % n.C;
      for (int64_t k = 0; k < n.K; ++k) {
        T sum_s = 0, sum_t = 0;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          const int64_t i = ((chunk * n.B + b) * n.K + k) * Cpad + ch;
          sum_s += part_s[i];
          sum_t += part_t[i];
        }
        gsp[bc * n.K + k] = sum_s;
        gtp[bc * n.K + k] = sum_t;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_relu_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& slope,
    const c10::optional<at::Tensor>& intercept) {
  const Shapes n = check_inputs(x, slope, intercept);
  check_same(x, grad_y, "x", "grad_y");
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "grad_y: expected the shape of x ", x.sizes(),
              ", got ", grad_y.sizes());
  const at::MemoryFormat format = output_format(x);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  at::Tensor gx = at::empty(x.sizes(), x.options().memory_format(format));
  at::Tensor gs, gt;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dynamic_relu_bwd",
                                  [&] {
    const auto opmath = c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value;
    if (gx.numel() == 0) {  // empty sums
      gs = at::zeros(slope.sizes(), slope.options().dtype(opmath));
      gt = at::zeros(slope.sizes(), slope.options().dtype(opmath));
      return;
    }
    gs = at::empty(slope.sizes(), slope.options().dtype(opmath));  // every entry written
    gt = at::empty(slope.sizes(), slope.options().dtype(opmath));
    const at::Tensor gc = grad_y.contiguous(format), xc = x.contiguous(format);
    const Tables c = tables(slope, intercept, n, opmath, channels_last);
    dispatch_pieces<scalar_t>(n.K, intercept.has_value(), [&](auto cfg) {
      using Config = decltype(cfg);
      using T = typename Config::T;
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      const scalar_t* gp = gc.const_data_ptr<scalar_t>();
      scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
      if (channels_last) {
        backward_channels_last<Config>(xp, gp, gxp, c, n, gs, gt);
        return;
      }
      const T* sp = c.s.const_data_ptr<T>();
      const T* tp = c.t.const_data_ptr<T>();
      T* gsp = gs.mutable_data_ptr<T>();
      T* gtp = gt.mutable_data_ptr<T>();
      const int K = static_cast<int>(n.K);
      at::parallel_for(0, n.B * n.C, grain(n.P), [&](int64_t begin, int64_t end) {
        MF_ISA_CALL(backward_planes<Config>, xp, gp, gxp, sp, tp, gsp, gtp, n.P, K, begin, end);
      });
    });
  });
  return {gx, gs.to(slope.scalar_type()), gt.to(slope.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CPU, m) {
  m.impl("dynamic_relu", &dynamic_relu_cpu);
  m.impl("dynamic_relu_backward", &dynamic_relu_backward_cpu);
}

}  // namespace mf_kernels

// Shared pieces of the CPU attention kernels (m2f_attention.cpp, f2m_attention.cpp): the
// problem description handed to the inner kernels, tiling and work-splitting decisions, the
// token-tensor checks, and the choice of instruction set.
//
// Instruction sets. The extension is built without -march flags (it must run on any x86-64),
// so the inner kernels (attention_simd.h, attention_tiles.h and the <op>_kernels.h headers)
// are compiled twice in each .cpp: once for the baseline (SSE2 on x86-64, NEON on aarch64) in
// namespace isa_base, and once under `#pragma GCC target("avx2,fma")` in namespace isa_avx2.
// The drivers pick one at run time (use_avx2()). Those headers have no include guard on
// purpose, and include nothing themselves: every library header is included here, before any
// target pragma, so that no library code is compiled for AVX2 by accident. They are written
// with GCC/Clang vector extensions (the extension is built with GCC or Clang only).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "../checks.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MF_KERNELS_HAVE_AVX2_CLONE 1
#else
#define MF_KERNELS_HAVE_AVX2_CLONE 0
#endif

namespace mf_kernels {
namespace attention {

// Positions per tile are a multiple of this, so that the inner kernels never need a scalar
// tail loop: it is a whole number of vectors of every (type, instruction set) pair (8 fp32
// lanes with AVX2). A partial last tile is copied into a zero-padded buffer. Small, because
// the padding is computed on: a 7x7 map pads 49 positions to 56.
constexpr int64_t kTileQuantum = 8;

// Uninitialised scratch memory (every buffer is written before it is read; zero-filling
// them showed up in profiles of small maps).
template <typename T>
std::unique_ptr<T[]> scratch(size_t size) {
  return std::unique_ptr<T[]>(new T[size]);
}

// Everything the inner kernels need to address x (and the tensors shaped like it) and the
// token tensors. x[b, c, p] is at x + b*sB + c*sC + p*sP: (C*P, P, 1) for NCHW and
// (P*C, 1, C) for channels_last. Token tensors [B, M, C] are contiguous.
struct Problem {
  int64_t B, C, P, M, heads, ch;
  int64_t sB, sC, sP;
  int64_t tile;     // positions per tile (multiple of kTileQuantum)
  int64_t ntiles;   // tiles per (b, head)
  int64_t nchunks;  // position chunks per (b, head): a task is one (b, head, chunk)
  double scale;     // s = ch^-1/2
  // s * log2(e): scores computed with it are in base 2, so the softmaxes need only exp2
  // (a cheaper range reduction than exp's).
  double logit_scale;

  int64_t tasks() const { return B * heads * nchunks; }
  // Tiles [first, last) of chunk `chunk`: an even split of the tiles.
  int64_t chunk_begin(int64_t chunk) const { return chunk * ntiles / nchunks; }
};

inline bool use_avx2() {
#if MF_KERNELS_HAVE_AVX2_CLONE
  // ATEN_CPU_CAPABILITY=default asks ATen for its baseline kernels; honour it too (it is also
  // how the tests exercise the baseline build of these kernels on an AVX2 machine).
  static const bool value = [] {
    const char* env = std::getenv("ATEN_CPU_CAPABILITY");
    if (env != nullptr && std::strcmp(env, "default") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return value;
#else
  return false;
#endif
}

// Tile length: the packed [ch, tile] slice of x should stay in L1 between the two passes a
// tile goes through (scores, then the weighted sum), but tiles much shorter than 64 positions
// pay too much per-tile overhead (horizontal sums, softmax bookkeeping).
inline int64_t tile_length(int64_t ch, int64_t P) {
  int64_t t = (4096 / std::max<int64_t>(ch, 1)) / kTileQuantum * kTileQuantum;
  t = std::min<int64_t>(std::max<int64_t>(t, 64), 512);
  // No longer than the (padded) map itself.
  const int64_t padded = (P + kTileQuantum - 1) / kTileQuantum * kTileQuantum;
  return std::max<int64_t>(std::min(t, padded), kTileQuantum);
}

// Chunks of positions per (b, head). With one thread there is nothing to split; otherwise
// aim for a few tasks per thread so that B*heads not a multiple of the thread count (batch 1
// with 2 heads on 3 threads, say) still balances. Every chunk has at least one tile.
inline int64_t chunk_count(int64_t slices, int64_t ntiles) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads <= 1 || slices <= 0) return 1;
  const int64_t wanted = (4 * threads + slices - 1) / slices;
  return std::max<int64_t>(1, std::min(wanted, ntiles));
}

inline Problem make_problem(const at::Tensor& xc, int64_t M, int64_t heads) {
  Problem n;
  n.B = xc.size(0);
  n.C = xc.size(1);
  n.P = xc.size(2) * xc.size(3);
  n.M = M;
  n.heads = heads;
  n.ch = n.C / heads;
  // The strides of the layout, not xc.strides(): a tensor counts as contiguous whatever the
  // strides of its size-1 dimensions are ([B, C, H, 1] with stride(3) = H, say), so those
  // cannot be trusted to step through positions.
  const bool channels_last = output_format(xc) == at::MemoryFormat::ChannelsLast;
  n.sB = n.C * n.P;
  n.sC = channels_last ? 1 : n.P;
  n.sP = channels_last ? n.C : 1;
  n.tile = tile_length(n.ch, n.P);
  n.ntiles = (n.P + n.tile - 1) / n.tile;
  n.nchunks = chunk_count(n.B * heads, n.ntiles);
  n.scale = 1.0 / std::sqrt(static_cast<double>(n.ch));
  n.logit_scale = n.scale * 1.4426950408889634;
  return n;
}

// x as the kernels read it: NCHW or channels_last (per the output rule), anything else copied.
// make_problem(feature_map(x, x), ...) then describes it.
inline at::Tensor feature_map(const at::Tensor& t, const at::Tensor& x) {
  return t.contiguous(output_format(x));
}

}  // namespace attention
}  // namespace mf_kernels

// Brackets for the AVX2 build of the inner kernels (see the top of this file).
#if MF_KERNELS_HAVE_AVX2_CLONE && defined(__clang__)
#define MF_KERNELS_BEGIN_AVX2 \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define MF_KERNELS_END_AVX2 _Pragma("clang attribute pop")
#elif MF_KERNELS_HAVE_AVX2_CLONE
#define MF_KERNELS_BEGIN_AVX2 _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")
#define MF_KERNELS_END_AVX2 _Pragma("GCC pop_options")
#endif

// Helpers shared by the CUDA kernels of mf_kernels (csrc/cuda/*.cu): launch plumbing (device
// guard, current stream, launch check), device math (exp2/log2 overloads, warp reductions),
// aligned vector loads, the shared-memory tile chooser, and the kernel that sums per-split fp32
// partials into an output tensor.
//
// Every kernel uses dynamic shared memory only and launches through MF_LAUNCH, so that the
// same sources also compile as plain C++ for the CPU emulation in tools/cuda_emu (MF_EMULATE).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <math.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#ifndef MF_EMULATE
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

#include "../checks.h"

#ifndef MF_EMULATE
// kernel<<<grid, block, smem, stream>>>; the kernel goes last because template arguments hold
// commas.
#define MF_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define MF_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define MF_DYNAMIC_SMEM(type, name)                                   \
  extern __shared__ __align__(16) unsigned char mf_dynamic_smem[]; \
  type* name = reinterpret_cast<type*>(mf_dynamic_smem)
#endif

namespace mf_kernels {
namespace cuda_kernels {

// The device a call runs on: a guard on the input's device, the current stream, the SM count.
struct DeviceContext {
#ifndef MF_EMULATE
  c10::cuda::CUDAGuard guard;
  cudaStream_t stream;
  int sms = 1;
  explicit DeviceContext(const at::Tensor& t)
      : guard(t.device()), stream(c10::cuda::getCurrentCUDAStream().stream()) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.device().index()));
  }
#else
  cudaStream_t stream = nullptr;
  int sms = 1;
  explicit DeviceContext(const at::Tensor&) : sms(emu::sm_count()) {}
#endif
};

constexpr int kWarp = 32;
// Dynamic shared memory a block may use without opting in (the same on every architecture).
constexpr size_t kSmemBudget = 48 * 1024;
// Largest grid.x.
constexpr int64_t kMaxGrid = 2147483647;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n items: enough to fill the GPU, never more than needed.
inline unsigned grid_for(int64_t n, int threads, int sms) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, threads), sms * 32)));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// V consecutive elements, loaded and stored as one (16-byte) transaction.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T val[V];
};

__device__ __forceinline__ float fexp2(float v) { return exp2f(v); }
__device__ __forceinline__ double fexp2(double v) { return exp2(v); }
__device__ __forceinline__ float flog2(float v) { return log2f(v); }
__device__ __forceinline__ double flog2(double v) { return log2(v); }

template <typename T>
__device__ __forceinline__ T fmax2(T a, T b) {
  return b > a ? b : a;
}

// Reductions over the 32 lanes of a warp; every lane must call them and gets the result.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmax2(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// out[i] = scale * sum_s part[s * n + i]: the deterministic second stage of every reduction
// over positions (per-block fp32 partials, summed in a fixed order), cast to the output dtype.
template <typename scalar_t, typename acc_t>
__global__ void sum_splits_kernel(const acc_t* __restrict__ part, scalar_t* __restrict__ out,
                                  int64_t n, int64_t splits, acc_t scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t s = 0; s < splits; ++s) sum += part[s * n + i];
    out[i] = static_cast<scalar_t>(sum * scale);
  }
}

// part: [splits, n] in acc_t; out: n contiguous elements of scalar_t.
template <typename scalar_t, typename acc_t>
void sum_splits(const at::Tensor& part, at::Tensor& out, int64_t splits, acc_t scale,
                const DeviceContext& ctx) {
  const int64_t n = out.numel();
  if (n == 0) return;
  constexpr int kThreads = 256;
  MF_LAUNCH(dim3(grid_for(n, kThreads, ctx.sms)), dim3(kThreads), 0, ctx.stream,
            sum_splits_kernel<scalar_t, acc_t>)(part.const_data_ptr<acc_t>(),
                                                out.mutable_data_ptr<scalar_t>(), n, splits, scale);
  MF_LAUNCH_CHECK();
}

// Tile sizes of the attention kernels: mt tokens per block (a chunk of the M tokens) and tp
// positions per shared-memory tile, the largest that fit kSmemBudget. elems(mt, tp) is the
// kernel's shared-memory footprint in elements of elem_size bytes. tp shrinks first (down to
// 16), then mt, then tp again.
struct Tiles {
  int64_t mt, tp;
};

constexpr int64_t kMaxTokensPerBlock = 32;
constexpr int64_t kMaxPositionsPerTile = 64;

template <typename F>
Tiles choose_tiles(int64_t M, int64_t D, size_t elem_size, F elems, const char* op) {
  int64_t mt = std::min<int64_t>(M, kMaxTokensPerBlock), tp = kMaxPositionsPerTile;
  while (static_cast<size_t>(elems(mt, tp)) * elem_size > kSmemBudget) {
    if (tp > 16) {
      tp /= 2;
    } else if (mt > 1) {
      mt = (mt + 1) / 2;
    } else if (tp > 1) {
      tp /= 2;
    } else {
      TORCH_CHECK_VALUE(false, op, ": C/heads = ", D,
                        " channels per head is too many for the CUDA kernel's shared memory");
    }
  }
  return {mt, tp};
}

// Splits of the H*W positions of one (batch, head, token chunk) across blocks, so that about
// four blocks per SM run: returns the number of splits and sets split_len, a multiple of tp.
inline int64_t choose_splits(int64_t P, int64_t tp, int64_t other_blocks, int sms,
                             int64_t& split_len) {
  const int64_t tiles = ceil_div(P, tp);
  const int64_t wanted = ceil_div(4 * static_cast<int64_t>(sms), std::max<int64_t>(other_blocks, 1));
  const int64_t splits = std::max<int64_t>(1, std::min(tiles, wanted));
  split_len = ceil_div(tiles, splits) * tp;
  return ceil_div(P, split_len);
}

}  // namespace cuda_kernels
}  // namespace mf_kernels

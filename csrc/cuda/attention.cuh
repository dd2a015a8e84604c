// Shared by the two attention kernels (m2f_attention.cu, f2m_attention.cu): the launch
// parameters and how a tile of the feature map x maps to threads and memory.
#pragma once

#include <cstdint>

namespace mf_kernels {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 256;
constexpr double kLog2e = 1.4426950408889634;  // softmaxes run in base 2 (exp2)
constexpr double kLn2 = 0.6931471805599453;    // ... and return natural log-sum-exps

struct Params {
  int64_t B, C, P, M, heads, D;
  int64_t mt, tp;             // tokens per chunk, positions per tile
  int64_t chunks;             // ceil(M / mt)
  int64_t splits, split_len;  // position splits; split_len is a multiple of tp
  double scale;               // s = D^-1/2
  bool cl;                    // x (and y / grad_x) channels_last, else contiguous NCHW
};

// Which (b, head, token chunk, split) a block handles:
// blockIdx.x = ((b * heads + h) * chunks + chunk) * splits + split. The digits come from 32-bit
// divisions (the grid has fewer than 2^31 blocks): a 64-bit division is a subroutine call on the
// GPU, around which live registers spill to local memory.
struct Block {
  int64_t b, h, chunk, split;
};

__device__ __forceinline__ Block block_coords(const Params& p) {
  unsigned r = blockIdx.x;
  const unsigned splits = static_cast<unsigned>(p.splits), chunks = static_cast<unsigned>(p.chunks),
                 heads = static_cast<unsigned>(p.heads);
  Block k;
  k.split = r % splits;
  r /= splits;
  k.chunk = r % chunks;
  r /= chunks;
  k.h = r % heads;
  k.b = r / heads;
  return k;
}

// (b, h, tile) of a block of the per-tile grids: blockIdx.x = (b * heads + h) * tiles + tile.
__device__ __forceinline__ void tile_block_coords(const Params& p, int64_t tiles, int64_t& b,
                                                  int64_t& h, int64_t& tile) {
  const unsigned r = blockIdx.x, t = static_cast<unsigned>(tiles), heads = static_cast<unsigned>(p.heads);
  tile = r % t;
  h = (r / t) % heads;
  b = (r / t) / heads;
}

// Offset of x[b, c, p] in contiguous NCHW or channels_last.
__device__ __forceinline__ int64_t x_offset(const Params& p, int64_t b, int64_t c, int64_t pos) {
  return p.cl ? (b * p.P + pos) * p.C + c : (b * p.C + c) * p.P + pos;
}

// Element i of a [D, tp] tile -> (d, t), ordered so that consecutive threads touch consecutive
// global addresses: t fastest for NCHW, d fastest for channels_last.
__device__ __forceinline__ void tile_coords(const Params& p, int i, int D, int tp, int& d, int& t) {
  if (p.cl) {
    t = i / D;
    d = i - t * D;
  } else {
    d = i / tp;
    t = i - d * tp;
  }
}

}  // namespace
}  // namespace cuda_kernels
}  // namespace mf_kernels

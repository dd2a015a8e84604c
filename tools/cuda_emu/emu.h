// A CPU emulation of the CUDA execution model, enough to run the kernels of csrc/cuda on the
// CPU for testing their index math and synchronisation on a machine without a GPU.
//
// Every thread of a block is a std::thread; __syncthreads is a std::barrier over the block, the
// warp shuffles and __syncwarp are barriers over the 32 threads of a warp; blocks run one after
// another; dynamic shared memory is a per-block buffer filled with 0xFF bytes (NaN) before each
// block, so reads of unwritten shared memory show up as NaN. A __syncthreads reached by only
// some threads deadlocks (run under a timeout). Include it before the .cu file, after the torch
// headers, with MF_EMULATE defined.
#pragma once

#include <math.h>

#include <atomic>
#include <barrier>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifndef MF_EMULATE
#define MF_EMULATE 1
#endif
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
using cudaStream_t = void*;

namespace emu {

struct BlockState {
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<unsigned long long> exchange;  // one shuffle slot per thread
  std::vector<unsigned char> smem;
};

inline thread_local dim3 tl_thread, tl_block, tl_bdim, tl_gdim;
inline thread_local BlockState* tl_state = nullptr;
inline thread_local unsigned tl_tid = 0;

inline int sm_count() {
  const char* e = std::getenv("MF_EMU_SMS");
  return e != nullptr ? std::atoi(e) : 4;
}

inline size_t max_smem() { return 48 * 1024; }

inline void run(dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn) {
  const unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024) throw std::runtime_error("emu: bad block size " + std::to_string(nthreads));
  if (smem > max_smem()) throw std::runtime_error("emu: too much dynamic shared memory: " + std::to_string(smem));
  if (grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    throw std::runtime_error("emu: bad grid");
  BlockState st;
  st.all = std::make_unique<std::barrier<>>(nthreads);
  for (unsigned w = 0; w * 32 < nthreads; ++w)
    st.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, nthreads - w * 32)));
  st.exchange.resize(nthreads);
  st.smem.assign(smem + 16, 0xFF);
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned tid = 0; tid < nthreads; ++tid) {
    threads.emplace_back([&, tid] {
      tl_state = &st;
      tl_tid = tid;
      tl_bdim = block;
      tl_gdim = grid;
      tl_thread = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            tl_block = dim3(bx, by, bz);
            fn();
            st.all->arrive_and_wait();
            if (tid == 0) std::memset(st.smem.data(), 0xFF, st.smem.size());
            st.all->arrive_and_wait();
          }
    });
  }
  for (auto& t : threads) t.join();
}

template <typename... P>
auto launch(dim3 grid, dim3 block, size_t smem, void (*kernel)(P...)) {
  return [=](auto&&... args) { run(grid, block, smem, [&] { kernel(args...); }); };
}

}  // namespace emu

#define threadIdx (::emu::tl_thread)
#define blockIdx (::emu::tl_block)
#define blockDim (::emu::tl_bdim)
#define gridDim (::emu::tl_gdim)

inline void __syncthreads() { emu::tl_state->all->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::tl_state->warps[emu::tl_tid / 32]->arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
  static_assert(sizeof(T) <= 8, "emu: shuffles of at most 8 bytes");
  emu::BlockState* st = emu::tl_state;
  const unsigned tid = emu::tl_tid, lane = tid % 32, base = tid - lane;
  std::memcpy(&st->exchange[tid], &v, sizeof(T));
  st->warps[tid / 32]->arrive_and_wait();
  T out;
  std::memcpy(&out, &st->exchange[base + (lane ^ static_cast<unsigned>(mask))], sizeof(T));
  st->warps[tid / 32]->arrive_and_wait();
  return out;
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
// Compile with -ffp-contract=off so that these stay unfused, as on the GPU.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }

#define MF_LAUNCH(grid, block, smem, stream, ...) ::emu::launch(grid, block, smem, __VA_ARGS__)
#define MF_LAUNCH_CHECK() ((void)0)
#define MF_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::emu::tl_state->smem.data())

// A CPU emulation of the CUDA execution model, enough to run the kernels of csrc/cuda on the
// CPU for testing their index math and synchronisation on a machine without a GPU.
//
// Every thread of a block is a fiber (a ucontext with its own stack), and all of them run on
// the calling thread, one at a time: a fiber runs until it waits at a barrier, then the next
// runnable one resumes. So an emulated launch uses one OS thread whatever its block size (one
// std::thread per CUDA thread spawned hundreds and loaded a 2-core machine past 150).
// __syncthreads is a barrier over the block, the warp shuffles and __syncwarp are barriers
// over the 32 threads of a warp; blocks run one after another; dynamic shared memory is a
// per-block buffer filled with 0xFF bytes (NaN) before each block, so reads of unwritten
// shared memory show up as NaN. A barrier that some threads never reach raises "emu: deadlock"
// (nothing else could run). Include it before the .cu file, after the torch headers, with
// MF_EMULATE defined.
#pragma once

#include <math.h>
#include <ucontext.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
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

struct Barrier {
  unsigned size = 0, arrived = 0;
  unsigned long long generation = 0;  // passed barriers: a waiter resumes once it moves on
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  unsigned tid = 0;
  dim3 thread, block;
  int waiting = -1;                    // the barrier it waits at, or -1
  unsigned long long generation = 0;   // that barrier's generation when it arrived
  bool done = false;
};

struct BlockState {
  std::vector<Barrier> barriers;  // [0]: the block; [1 + w]: warp w
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  dim3 grid, bdim;
  std::exception_ptr error;
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

// Arrives at barrier `id`; unless it is the last to arrive, the fiber waits (the scheduler
// resumes it once the barrier's generation has moved on).
inline void arrive_and_wait(unsigned id) {
  BlockState* st = tl_state;
  Barrier& b = st->barriers[id];
  if (++b.arrived == b.size) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  Fiber* f = st->current;
  f->waiting = static_cast<int>(id);
  f->generation = b.generation;
  f->block = tl_block;
  swapcontext(&f->context, &st->scheduler);
}

// A fiber's life: the kernel once per block, in block order, with the block's end as a barrier
// (and shared memory refilled with NaN bytes in between).
inline void fiber_main() {
  BlockState* st = tl_state;
  Fiber* f = st->current;
  try {
    for (unsigned bz = 0; bz < st->grid.z; ++bz)
      for (unsigned by = 0; by < st->grid.y; ++by)
        for (unsigned bx = 0; bx < st->grid.x; ++bx) {
          tl_block = dim3(bx, by, bz);
          (*st->body)();
          arrive_and_wait(0);
          if (tl_tid == 0) std::memset(st->smem.data(), 0xFF, st->smem.size());
          arrive_and_wait(0);
        }
  } catch (...) {
    if (!st->error) st->error = std::current_exception();
  }
  st->current->done = true;  // returning switches to uc_link, the scheduler
}

inline void run(dim3 grid, dim3 block, size_t smem, const std::function<void()>& fn) {
  const unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024) throw std::runtime_error("emu: bad block size " + std::to_string(nthreads));
  if (smem > max_smem()) throw std::runtime_error("emu: too much dynamic shared memory: " + std::to_string(smem));
  if (grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0)
    throw std::runtime_error("emu: bad grid");
  constexpr size_t kStack = 256 * 1024;  // untouched pages cost nothing
  BlockState st;
  st.body = &fn;
  st.grid = grid;
  st.bdim = block;
  st.barriers.resize(1 + (nthreads + 31) / 32);
  st.barriers[0].size = nthreads;
  for (unsigned w = 0; w * 32 < nthreads; ++w) st.barriers[1 + w].size = std::min(32u, nthreads - w * 32);
  st.exchange.resize(nthreads);
  st.smem.assign(smem + 16, 0xFF);
  st.fibers.resize(nthreads);
  BlockState* const outer = tl_state;  // restored below (a launch is not reentrant, but be safe)
  tl_state = &st;
  tl_bdim = block;
  tl_gdim = grid;
  for (unsigned tid = 0; tid < nthreads; ++tid) {
    Fiber& f = st.fibers[tid];
    f.tid = tid;
    f.thread = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
    f.stack.reset(new char[kStack]);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStack;
    f.context.uc_link = &st.scheduler;
    makecontext(&f.context, &fiber_main, 0);
  }
  unsigned finished = 0;
  while (finished < nthreads) {
    bool progress = false;
    for (Fiber& f : st.fibers) {
      if (f.done) continue;
      if (f.waiting >= 0) {
        if (st.barriers[f.waiting].generation == f.generation) continue;  // still waiting
        f.waiting = -1;
      }
      st.current = &f;
      tl_thread = f.thread;
      tl_tid = f.tid;
      tl_block = f.block;
      swapcontext(&st.scheduler, &f.context);
      progress = true;
      if (f.done) ++finished;
    }
    if (!progress) {
      tl_state = outer;
      if (st.error) std::rethrow_exception(st.error);
      throw std::runtime_error("emu: deadlock: a barrier that some threads of the block never reach");
    }
  }
  tl_state = outer;
  if (st.error) std::rethrow_exception(st.error);
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

inline void __syncthreads() { emu::arrive_and_wait(0); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::arrive_and_wait(1 + emu::tl_tid / 32); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
  static_assert(sizeof(T) <= 8, "emu: shuffles of at most 8 bytes");
  emu::BlockState* st = emu::tl_state;
  const unsigned tid = emu::tl_tid, lane = tid % 32, base = tid - lane;
  std::memcpy(&st->exchange[tid], &v, sizeof(T));
  emu::arrive_and_wait(1 + tid / 32);
  T out;
  std::memcpy(&out, &st->exchange[base + (lane ^ static_cast<unsigned>(mask))], sizeof(T));
  emu::arrive_and_wait(1 + tid / 32);
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

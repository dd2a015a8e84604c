// What every kernels_<isa>.cpp includes before it opens its target region: every library
// header the per-ISA kernel headers use (so that no library code is compiled for a wider
// instruction set by accident), and the brackets of that region.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels.h"

// Functions defined between MF_FROZEN_BEGIN_TARGET(isa) and MF_FROZEN_END_TARGET are compiled
// for that instruction set (and only ever called after selected_isa() has checked the CPU).
#if defined(__clang__)
#define MF_FROZEN_PRAGMA(x) _Pragma(#x)
#define MF_FROZEN_BEGIN_TARGET(isa) \
  MF_FROZEN_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define MF_FROZEN_END_TARGET _Pragma("clang attribute pop")
#else
#define MF_FROZEN_PRAGMA(x) _Pragma(#x)
#define MF_FROZEN_BEGIN_TARGET(isa) _Pragma("GCC push_options") MF_FROZEN_PRAGMA(GCC target(isa))
#define MF_FROZEN_END_TARGET _Pragma("GCC pop_options")
#endif

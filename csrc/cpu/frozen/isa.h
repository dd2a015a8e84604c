// The instruction set the frozen-inference kernels run with, chosen once at run time.
//
// The extension is built without -march flags, so that one build runs on any machine of its
// architecture. The kernels of this folder are compiled once per instruction set, each in its
// own translation unit under a target pragma (kernels_<isa>.cpp); kernel_table() hands out the
// best one the CPU supports:
//   avx512  x86-64 with AVX-512 F/BW/DQ/VL (16 fp32 lanes)
//   avx2    x86-64 with AVX2 and FMA (8 lanes)
//   baseline  every machine: SSE2 on x86-64, NEON on aarch64 (4 lanes)
// MF_KERNELS_CPU_ISA=baseline|avx2|avx512 caps the choice (tests use it to run every build on
// one machine; asking for more than the CPU has is an error), and ATEN_CPU_CAPABILITY=default
// means baseline, as it does for ATen.
#pragma once

#include <cstdint>
#include <string>

namespace mf_kernels {
namespace frozen {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);

// What this CPU supports, ignoring the environment.
Isa best_supported_isa();

// The instruction set the kernels use: the best supported, capped by the environment.
Isa selected_isa();

}  // namespace frozen
}  // namespace mf_kernels

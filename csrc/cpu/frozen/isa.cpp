// Run-time choice of instruction set for the frozen-inference kernels (see isa.h), and the
// op mf_kernels::cpu_isa() that reports it (benchmark records state which path ran).
#include "isa.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

namespace mf_kernels {
namespace frozen {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

Isa best_supported_isa() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

namespace {

Isa choose() {
  const Isa best = best_supported_isa();
  const char* aten = std::getenv("ATEN_CPU_CAPABILITY");
  if (aten != nullptr && std::strcmp(aten, "default") == 0) return Isa::kBaseline;
  const char* asked = std::getenv("MF_KERNELS_CPU_ISA");
  if (asked == nullptr || *asked == '\0') return best;
  Isa want;
  if (std::strcmp(asked, "baseline") == 0) {
    want = Isa::kBaseline;
  } else if (std::strcmp(asked, "avx2") == 0) {
    want = Isa::kAvx2;
  } else if (std::strcmp(asked, "avx512") == 0) {
    want = Isa::kAvx512;
  } else {
    TORCH_CHECK_VALUE(false, "MF_KERNELS_CPU_ISA: expected baseline, avx2 or avx512, got '",
                      asked, "'");
  }
  TORCH_CHECK_VALUE(static_cast<int>(want) <= static_cast<int>(best), "MF_KERNELS_CPU_ISA=",
                    asked, ": this CPU supports at most ", isa_name(best));
  return want;
}

}  // namespace

Isa selected_isa() {
  static const Isa isa = choose();
  return isa;
}

namespace {

std::string cpu_isa() { return isa_name(selected_isa()); }

}  // namespace
}  // namespace frozen

TORCH_LIBRARY_IMPL(mf_kernels, CompositeImplicitAutograd, m) {
  m.impl("cpu_isa", &frozen::cpu_isa);
}

}  // namespace mf_kernels

// The instruction-set-neutral parts of kernels.h: which table runs, and scratch sizes.
#include "kernels.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace mf_kernels {
namespace frozen {

const KernelTable& kernel_table(Isa isa) {
  const KernelTable* table = nullptr;
  if (isa == Isa::kAvx512) table = avx512_kernels();
  if (isa == Isa::kAvx2 || (isa == Isa::kAvx512 && table == nullptr)) table = avx2_kernels();
  return table != nullptr ? *table : *baseline_kernels();
}

const KernelTable& kernel_table() {
  static const KernelTable& table = kernel_table(selected_isa());
  return table;
}

const KernelTable& kernel_table(const std::string& name) {
  for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512}) {
    if (name != isa_name(isa)) continue;
    TORCH_CHECK_VALUE(static_cast<int>(isa) <= static_cast<int>(best_supported_isa()),
                      "isa: this CPU supports at most ", isa_name(best_supported_isa()),
                      ", not ", name);
    return kernel_table(isa);
  }
  TORCH_CHECK_VALUE(false, "isa: expected baseline, avx2 or avx512, got '", name, "'");
  return kernel_table();  // not reached
}

int64_t attention_scratch_floats(int64_t positions, int64_t tokens, int64_t channels) {
  // Scores [P, ldS] with ldS = M rounded up to the widest vector (16 lanes); the packed token
  // operand (M or ch columns in 32-wide panels); m2f's out^T [ch, ldS].
  const auto up = [](int64_t n, int64_t m) { return (n + m - 1) / m * m; };
  const int64_t ldS = up(tokens, 16);
  const int64_t packed = std::max(up(tokens, kPanel) * channels, up(channels, kPanel) * tokens);
  return positions * ldS + packed + channels * ldS;
}

}  // namespace frozen
}  // namespace mf_kernels

// The baseline build of the frozen kernels: SSE2 on x86-64, NEON on aarch64, 4 fp32 lanes;
// it runs on every machine (kernels_isa.h).
#include "kernels_prelude.h"

namespace mf_kernels {
namespace frozen {
namespace isa_baseline {
#define MF_VEC_BYTES 16
#define MF_FROZEN_ISA Isa::kBaseline
#include "kernels_isa.h"
#undef MF_FROZEN_ISA
#undef MF_VEC_BYTES
}  // namespace isa_baseline

const KernelTable* baseline_kernels() { return &isa_baseline::table; }

}  // namespace frozen
}  // namespace mf_kernels

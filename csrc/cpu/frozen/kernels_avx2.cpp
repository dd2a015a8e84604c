// The AVX2 + FMA build of the frozen kernels, 8 fp32 lanes (kernels_isa.h); x86-64 only.
#include "kernels_prelude.h"

namespace mf_kernels {
namespace frozen {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
MF_FROZEN_BEGIN_TARGET("avx2,fma")
namespace isa_avx2 {
#define MF_VEC_BYTES 32
#define MF_FROZEN_ISA Isa::kAvx2
#include "kernels_isa.h"
#undef MF_FROZEN_ISA
#undef MF_VEC_BYTES
}  // namespace isa_avx2
MF_FROZEN_END_TARGET

const KernelTable* avx2_kernels() { return &isa_avx2::table; }
#else
const KernelTable* avx2_kernels() { return nullptr; }
#endif

}  // namespace frozen
}  // namespace mf_kernels

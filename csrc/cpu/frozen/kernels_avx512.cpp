// The AVX-512 build of the frozen kernels (F, BW, DQ, VL), 16 fp32 lanes (kernels_isa.h);
// x86-64 only.
#include "kernels_prelude.h"

namespace mf_kernels {
namespace frozen {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
MF_FROZEN_BEGIN_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
namespace isa_avx512 {
#define MF_VEC_BYTES 64
#define MF_FROZEN_ISA Isa::kAvx512
#include "kernels_isa.h"
#undef MF_FROZEN_ISA
#undef MF_VEC_BYTES
}  // namespace isa_avx512
MF_FROZEN_END_TARGET

const KernelTable* avx512_kernels() { return &isa_avx512::table; }
#else
const KernelTable* avx512_kernels() { return nullptr; }
#endif

}  // namespace frozen
}  // namespace mf_kernels

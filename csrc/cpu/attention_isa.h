// Instantiates an attention kernels header once per instruction set, and defines MF_ISA_CALL,
// which calls the build that the CPU supports (see attention_common.h).
//
// NO include guard: a kernel .cpp defines MF_ATTENTION_KERNELS (the header's name, a string)
// and includes this inside `namespace mf_kernels { namespace {`, once.
namespace isa_base {
using namespace mf_kernels::attention;
#define MF_VEC_BYTES 16
#include "attention_simd.h"
#include "attention_tiles.h"
#include MF_ATTENTION_KERNELS
#undef MF_VEC_BYTES
}  // namespace isa_base
#if MF_KERNELS_HAVE_AVX2_CLONE
MF_KERNELS_BEGIN_AVX2
namespace isa_avx2 {
using namespace mf_kernels::attention;
#define MF_VEC_BYTES 32
#include "attention_simd.h"
#include "attention_tiles.h"
#include MF_ATTENTION_KERNELS
#undef MF_VEC_BYTES
}  // namespace isa_avx2
MF_KERNELS_END_AVX2
#define MF_ISA_CALL(fn, ...) \
  (attention::use_avx2() ? isa_avx2::fn(__VA_ARGS__) : isa_base::fn(__VA_ARGS__))
#else
#define MF_ISA_CALL(fn, ...) isa_base::fn(__VA_ARGS__)
#endif

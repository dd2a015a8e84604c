// The body of one instruction-set build of the frozen kernels: their per-ISA headers and the
// table that hands them out (see kernels.h).
//
// NO include guard: kernels_<isa>.cpp includes kernels_prelude.h, opens its target region
// and namespace, defines MF_VEC_BYTES, and includes this once.
#include "simd.h"
#include "gemm_kernels.h"
#include "depthwise_kernels.h"
#include "attention_kernels.h"
#include "elementwise_kernels.h"

const KernelTable table = {MF_FROZEN_ISA, L, &gemm, &depthwise, &m2f_attention, &f2m_attention,
                           &gelu};

// The token side of a frozen Mobile-Former block, for one image: M (3 to 6) tokens of d
// dimensions, so every projection is a GEMM of M rows through the kernel table, and the
// norms, softmaxes and activations are loops over a few hundred values.
#pragma once

#include <cstdint>

#include "kernels.h"
#include "plan.h"

namespace mf_kernels {
namespace frozen {

// Floats of scratch that mobile2former, former and block_tokens need beyond their outputs.
int64_t token_scratch_floats(int64_t tokens, int64_t dim, int64_t max_channels);

// out = x W + b for `rows` rows of x (row stride = in) into y (row stride ldy), optionally
// with y += residual (row stride ldr) after the bias.
void linear(const KernelTable& t, const Linear& l, const float* x, int64_t rows, float* y,
            int64_t ldy, const float* residual = nullptr, int64_t ldr = 0);

// z [M, d] <- LN(z + proj((attention(x, q(z)) * 2 hsigmoid(gate(z)))); x is [P, C] (ldx).
// attention_scratch: attention_scratch_floats(P, M, C) floats.
void mobile2former(const KernelTable& t, const Mobile2FormerWeights& w, const float* x,
                   int64_t positions, int64_t channels, int64_t ldx, float* z, int64_t tokens,
                   int64_t dim, float* scratch, float* attention_scratch);

// z <- LN1(z + channel_mlp(MHA(q(z), z, z)));  z <- LN2(z + ffn2(gelu(ffn1(z)))).
void former(const KernelTable& t, const FormerWeights& w, float* z, int64_t tokens,
            int64_t dim, float* scratch);

// The outputs of a block's token work.
struct TokenOutputs {
  float* slopes1 = nullptr;  // [2 n1]: a1 then a2 of the first dynamic ReLU
  float* slopes2 = nullptr;  // [2 n2]
  float* key_value = nullptr;  // [M, 2 C_out]: keys, then values
};

// z <- Former(M2F(x, z)); the slopes of both dynamic ReLUs from token 0; the F2M keys and
// values.
void block_tokens(const KernelTable& t, const BlockTokenWeights& w, const float* x, int64_t positions, int64_t channels, float* z, int64_t tokens,
                  int64_t dim, const TokenOutputs& out, float* scratch,
                  float* attention_scratch);

}  // namespace frozen
}  // namespace mf_kernels

// block_tokens: everything a Mobile-Former block computes on its tokens, in one call
// (used by mf_kernels.freeze for inference; spec sections 7-11).
//
//   Z' = Former(M2F(x, Z))                          the block's output tokens
//   slope1 = hyper1(Z'[:, 0]),  slope2 = hyper2(Z'[:, 0])   [B, n, 2] each
//   K = k(Z'),  V = v(Z')                            the F2M keys and values, [B, M, C_out]
//
// weights, in order: the M2F's 8 (q, gate, proj, norm: weight and bias each), the Former's 12
// (q, out, norm1, ffn1, ffn2, norm2), hyper1's 4 and hyper2's 4 (two Linears), the F2M's 4 (k, v).
#include <torch/library.h>

#include "modules.h"

namespace mf_kernels {
namespace {

constexpr size_t kBlockTokenWeights = 8 + 12 + 4 + 4 + 4;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> block_tokens(
    const at::Tensor& x, const at::Tensor& z, at::TensorList w, int64_t bridge_heads,
    int64_t former_heads) {
  TORCH_CHECK_VALUE(w.size() == kBlockTokenWeights, "weights: expected ", kBlockTokenWeights,
                    " tensors (M2F 8, Former 12, two hyper-MLPs 4 each, F2M 4), got ", w.size());
  at::Tensor tokens =
      mobile2former(x, z, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], bridge_heads);
  tokens = former(tokens, w[8], w[9], w[10], w[11], w[12], w[13], w[14], w[15], w[16], w[17],
                  w[18], w[19], former_heads);
  const at::Tensor first = tokens.select(1, 0);  // token 0 drives both dynamic ReLUs
  at::Tensor slope1 = dynamic_relu_slopes(first, w[20], w[21], w[22], w[23]);
  at::Tensor slope2 = dynamic_relu_slopes(first, w[24], w[25], w[26], w[27]);
  at::Tensor k = at::linear(tokens, w[28], w[29]);
  at::Tensor v = at::linear(tokens, w[30], w[31]);
  return {tokens, slope1, slope2, k, v};
}

}  // namespace

TORCH_LIBRARY_IMPL(mf_kernels, CompositeImplicitAutograd, m) {
  m.impl("block_tokens", &block_tokens);
}

}  // namespace mf_kernels

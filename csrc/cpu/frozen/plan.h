// A frozen Mobile-Former as the engine sees it: the network's structure read from the op's
// `config` integers and raw pointers into its `weights` tensors (both written by
// mf_kernels/frozen_plan.py, which documents the format and the weight order).
//
// The engine runs one image at a time in NHWC. Inside a block, channels may be in another
// order than the reference's (depthwise convolutions with a channel multiplier produce their
// outputs multiple-major, and MF-26M's channel shuffles are folded into stores): the freezer
// permutes the weights that read those channels, so block inputs and outputs, and therefore
// logits, are the reference's.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mf_kernels {
namespace frozen {

// Bumped whenever the config layout or the weight order changes.
constexpr int64_t kFormatVersion = 1;

enum class BlockKind : int64_t { kLite = 0, kStride1 = 1, kDown = 2 };

// A GEMM weight packed in kPanel-column panels (kernels.h); `groups` such matrices of
// [in / groups, out / groups] one after the other.
struct PointwiseConv {
  const float* weight = nullptr;
  const float* bias = nullptr;
  const int32_t* column_map = nullptr;  // a channel shuffle folded into the stores, or null
  int64_t in = 0, out = 0, groups = 1;
};

// A depthwise 3x3 convolution with channel multiplier `mult`: `mult` groups of tap-major
// [9, in] weights; group j writes output channels [j * in, (j + 1) * in).
struct DepthwiseConv {
  const float* weight = nullptr;
  const float* bias = nullptr;
  int64_t in = 0, mult = 1, stride = 1;
};

// A Linear (packed [in, out]) with its bias.
struct Linear {
  const float* weight = nullptr;
  const float* bias = nullptr;
  int64_t in = 0, out = 0;
};

struct Norm {
  const float* weight = nullptr;
  const float* bias = nullptr;
};

// Mobile->Former: [q | gate] = z W_qg + b (one GEMM, 2C columns), out = attention(x, q),
// z = LN(z + (out * 2 hsigmoid(gate)) W_proj + b).
struct Mobile2FormerWeights {
  Linear query_gate, proj;
  Norm norm;
  int64_t heads = 2;
};

struct FormerWeights {
  Linear query, channel_mlp, ffn1, ffn2;
  Norm norm1, norm2;
  int64_t heads = 4;
};

// Everything a block computes on its tokens.
struct BlockTokenWeights {
  Mobile2FormerWeights m2f;
  FormerWeights former;
  Linear hyper_first;   // both hyper-MLPs' first Linears side by side: [d, 2 * d/4]
  Linear hyper1, hyper2;  // second Linears: [d/4, 2 n] (a1 rows, then a2 rows)
  Linear key_value;     // [d, 2 C_out]: keys, then values
};

// One block. Lite: dw1 (ReLU6) -> pw1 [+ x]. Stride-1: pw1 (dynamic ReLU 1) -> dw1 (dynamic
// ReLU 2) -> pw2 [+ x] -> F2M. Down: dw1 (dynamic ReLU 1) -> pw1 = r -> dw2 (dynamic ReLU 2)
// -> pw2 + r -> F2M.
struct Block {
  BlockKind kind = BlockKind::kLite;
  int64_t in = 0, out = 0;
  bool skip = false;
  DepthwiseConv dw1, dw2;
  PointwiseConv pw1, pw2;
  BlockTokenWeights tokens;
  int64_t bridge_heads = 2;
};

// Final Mobile->Former, then: [shuffle] -> pw (ReLU6) -> mean -> h-swish -> concat token 0
// -> fc1 -> h-swish -> fc2.
struct Head {
  Mobile2FormerWeights m2f;
  const int32_t* input_map = nullptr;  // head input channel permutation (MF-26M), or null
  PointwiseConv conv;
  Linear fc1, fc2;
};

struct Network {
  int64_t tokens = 0, dim = 0, classes = 0;
  const float* initial_tokens = nullptr;  // [M, d]
  Linear stem;                            // packed [27, C0]: taps (ky, kx, channel)
  std::vector<Block> blocks;
  Head head;
};

// Reads and checks (config, weights); raises ValueError naming what does not fit.
Network parse_network(at::TensorList weights, at::IntArrayRef config);

}  // namespace frozen
}  // namespace mf_kernels

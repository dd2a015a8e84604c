// The token side of a frozen block (tokens.h). Formulas are the reference's
// (mobileformer/bridges.py, layers.py); BatchNorm is already folded and the hyper-MLPs' first
// Linears, the query and gate, and the keys and values are each one GEMM.
#include "tokens.h"

#include <algorithm>
#include <cmath>

namespace mf_kernels {
namespace frozen {
namespace {

constexpr float kNormEps = 1e-5f;  // every LayerNorm of Mobile-Former

// x[r] = LN(x[r]) * weight + bias for each of `rows` rows of `dim` values.
void layer_norm(float* x, int64_t rows, int64_t dim, const Norm& n) {
  for (int64_t r = 0; r < rows; ++r, x += dim) {
    float mean = 0.0f;
    for (int64_t i = 0; i < dim; ++i) mean += x[i];
    mean /= static_cast<float>(dim);
    float var = 0.0f;
    for (int64_t i = 0; i < dim; ++i) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / std::sqrt(var / static_cast<float>(dim) + kNormEps);
    for (int64_t i = 0; i < dim; ++i) x[i] = (x[i] - mean) * inv * n.weight[i] + n.bias[i];
  }
}

// relu6(x + 3) / 6
inline float hard_sigmoid(float x) { return std::min(std::max(x + 3.0f, 0.0f), 6.0f) / 6.0f; }

}  // namespace

int64_t token_scratch_floats(int64_t tokens, int64_t dim, int64_t max_channels) {
  // mobile2former: [q | gate] (2C), out (C), then the pre-norm sum (d), per token.
  const int64_t m2f = tokens * (3 * max_channels + dim);
  // former: q, attention output, pre-norm sum (d each), ffn hidden (2d), per token, and the
  // M x M scores.
  const int64_t former = tokens * 5 * dim + tokens * tokens;
  // hyper-MLPs' hidden layer.
  const int64_t hyper = 2 * (dim / 4);
  return std::max(m2f, former) + hyper;
}

void linear(const KernelTable& t, const Linear& l, const float* x, int64_t rows, float* y,
            int64_t ldy, const float* residual, int64_t ldr) {
  Gemm g;
  g.a = x;
  g.a_row_stride = l.in;
  g.b = l.weight;
  g.b_panel_stride = l.in * kPanel;
  g.c = y;
  g.ldc = ldy;
  g.rows = rows;
  g.depth = l.in;
  g.cols = l.out;
  g.epilogue.bias = l.bias;
  g.epilogue.residual = residual;
  g.epilogue.ld_residual = ldr;
  t.gemm(g, 0, rows);
}

void mobile2former(const KernelTable& t, const Mobile2FormerWeights& w, const float* x,
                   int64_t positions, int64_t channels, int64_t ldx, float* z, int64_t tokens,
                   int64_t dim, float* scratch, float* attention_scratch) {
  const int64_t M = tokens, C = channels;
  float* query_gate = scratch;             // [M, 2C]
  float* out = query_gate + M * 2 * C;     // [M, C]
  float* sum = out + M * C;                // [M, d]
  linear(t, w.query_gate, z, M, query_gate, 2 * C);
  Attention a;
  a.x = x;
  a.positions = positions;
  a.channels = C;
  a.ldx = ldx;
  a.tokens = M;
  a.heads = w.heads;
  a.q = query_gate;
  a.ldt = 2 * C;
  a.out = out;
  a.scratch = attention_scratch;
  if (positions > 0) {
    t.m2f_attention(a);
  } else {
    std::fill(out, out + M * C, 0.0f);  // softmax over no positions: an empty sum
  }
  // The gate reads the block's input tokens: out *= 2 hsigmoid(gate).
  for (int64_t m = 0; m < M; ++m) {
    const float* gate = query_gate + m * 2 * C + C;
    for (int64_t c = 0; c < C; ++c) out[m * C + c] *= 2.0f * hard_sigmoid(gate[c]);
  }
  linear(t, w.proj, out, M, sum, dim, z, dim);
  layer_norm(sum, M, dim, w.norm);
  std::copy(sum, sum + M * dim, z);
}

void former(const KernelTable& t, const FormerWeights& w, float* z, int64_t tokens,
            int64_t dim, float* scratch) {
  const int64_t M = tokens, d = dim, ch = dim / w.heads;
  float* q = scratch;           // [M, d]
  float* att = q + M * d;       // [M, d]
  float* sum = att + M * d;     // [M, d]
  float* hidden = sum + M * d;  // [M, 2d]
  float* scores = hidden + M * 2 * d;  // [M, M]
  linear(t, w.query, z, M, q, d);
  // Multi-head attention with the tokens themselves as keys and values (no projections).
  const float scale = 1.0f / std::sqrt(static_cast<float>(ch));
  for (int64_t h = 0; h < w.heads; ++h) {
    const int64_t hc = h * ch;
    for (int64_t m = 0; m < M; ++m) {
      float mx = -INFINITY;
      for (int64_t n = 0; n < M; ++n) {
        float s = 0.0f;
        for (int64_t c = 0; c < ch; ++c) s += q[m * d + hc + c] * z[n * d + hc + c];
        scores[m * M + n] = s * scale;
        mx = std::max(mx, s * scale);
      }
      float total = 0.0f;
      for (int64_t n = 0; n < M; ++n) {
        scores[m * M + n] = std::exp(scores[m * M + n] - mx);
        total += scores[m * M + n];
      }
      float* o = att + m * d + hc;
      std::fill(o, o + ch, 0.0f);
      for (int64_t n = 0; n < M; ++n) {
        const float p = scores[m * M + n] / total;
        for (int64_t c = 0; c < ch; ++c) o[c] += p * z[n * d + hc + c];
      }
    }
  }
  linear(t, w.channel_mlp, att, M, sum, d, z, d);
  layer_norm(sum, M, d, w.norm1);
  std::copy(sum, sum + M * d, z);
  linear(t, w.ffn1, z, M, hidden, 2 * d);
  t.gelu(hidden, M * 2 * d);
  linear(t, w.ffn2, hidden, M, sum, d, z, d);
  layer_norm(sum, M, d, w.norm2);
  std::copy(sum, sum + M * d, z);
}

namespace {

// slopes [2n] <- a1 = 2 hsigmoid(theta[:n]), a2 = 2 hsigmoid(theta[n:]) - 1, theta = the
// second Linear of the hyper-MLP on its hidden layer.
void dynamic_relu_slopes(const KernelTable& t, const Linear& second, const float* hidden,
                         float* slopes) {
  linear(t, second, hidden, 1, slopes, second.out);
  const int64_t n = second.out / 2;
  for (int64_t c = 0; c < n; ++c) slopes[c] = 2.0f * hard_sigmoid(slopes[c]);
  for (int64_t c = n; c < 2 * n; ++c) slopes[c] = 2.0f * hard_sigmoid(slopes[c]) - 1.0f;
}

}  // namespace

void block_tokens(const KernelTable& t, const BlockTokenWeights& w, const float* x, int64_t positions, int64_t channels, float* z, int64_t tokens,
                  int64_t dim, const TokenOutputs& out, float* scratch,
                  float* attention_scratch) {
  mobile2former(t, w.m2f, x, positions, channels, channels, z, tokens, dim, scratch,
                attention_scratch);
  former(t, w.former, z, tokens, dim, scratch);
  // Both hyper-MLPs read token 0: their first Linears in one GEMM, ReLU, then each second.
  float* hidden = scratch;
  linear(t, w.hyper_first, z, 1, hidden, w.hyper_first.out);
  for (int64_t i = 0; i < w.hyper_first.out; ++i) hidden[i] = std::max(hidden[i], 0.0f);
  const int64_t quarter = w.hyper_first.out / 2;
  dynamic_relu_slopes(t, w.hyper1, hidden, out.slopes1);
  dynamic_relu_slopes(t, w.hyper2, hidden + quarter, out.slopes2);
  linear(t, w.key_value, z, tokens, out.key_value, w.key_value.out);
}

}  // namespace frozen
}  // namespace mf_kernels

// parse_network: (weights, config) -> Network, checking every size against the structure.
//
// config (all integers):
//   header:    version, M (tokens), d (token dim), classes, blocks, C0 (stem channels)
//   per block: kind, in, out, skip, bridge_heads, former_heads, dw1_mult, dw1_stride,
//              dw2_mult, pw1_out, pw1_groups, pw1_map, pw2_groups, pw2_map
//   head:      bridge_heads, input_map, conv_out, conv_groups, fc1_out
// weights, in this order (float32, contiguous; maps int32):
//   initial tokens [M, d]; stem (packed [27, C0], bias);
//   per block: its token weights unless lite (query_gate, proj, norm, former query,
//   channel_mlp, norm1, ffn1, ffn2, norm2, hyper_first, hyper1, hyper2, key_value: a weight
//   and a bias each), then its convolutions: lite dw1, pw1 [map]; stride-1 pw1 [map], dw1,
//   pw2 [map]; down dw1, pw1, dw2, pw2 (a weight and a bias each);
//   head: query_gate, proj, norm, [input map], conv, fc1, fc2.
#include "plan.h"

#include <c10/util/Exception.h>

#include "kernels.h"

namespace mf_kernels {
namespace frozen {
namespace {

int64_t panels(int64_t cols) { return (cols + kPanel - 1) / kPanel; }

class Reader {
 public:
  Reader(at::TensorList weights, at::IntArrayRef config) : weights_(weights), config_(config) {}

  int64_t next_int(const char* what) {
    TORCH_CHECK_VALUE(ci_ < config_.size(), "config: ended before ", what);
    return config_[ci_++];
  }

  const at::Tensor& next_tensor(const char* what, at::ScalarType dtype, int64_t numel) {
    TORCH_CHECK_VALUE(wi_ < weights_.size(), "weights: ended before ", what);
    const at::Tensor& t = weights_[wi_++];
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, "weights[", wi_ - 1, "] (", what,
                     "): expected dtype ", dtype, ", got ", t.scalar_type(),
                     " (the frozen CPU path runs float32 models)");
    TORCH_CHECK_VALUE(t.device().is_cpu() && t.is_contiguous(), "weights[", wi_ - 1, "] (",
                      what, "): expected a contiguous CPU tensor");
    TORCH_CHECK_VALUE(t.numel() == numel, "weights[", wi_ - 1, "] (", what, "): expected ",
                      numel, " elements, got ", t.numel());
    return t;
  }

  const float* floats(const char* what, int64_t numel) {
    return next_tensor(what, at::kFloat, numel).const_data_ptr<float>();
  }

  Linear linear(const char* what, int64_t in, int64_t out) {
    Linear l;
    l.in = in;
    l.out = out;
    l.weight = floats(what, panels(out) * in * kPanel);
    l.bias = floats(what, out);
    return l;
  }

  Norm norm(const char* what, int64_t dim) {
    Norm n;
    n.weight = floats(what, dim);
    n.bias = floats(what, dim);
    return n;
  }

  PointwiseConv pointwise(const char* what, int64_t in, int64_t out, int64_t groups,
                          bool has_map) {
    TORCH_CHECK_VALUE(groups > 0 && in % groups == 0 && out % groups == 0, "config: ", what,
                      " has ", in, " -> ", out, " channels in ", groups, " groups");
    PointwiseConv p;
    p.in = in;
    p.out = out;
    p.groups = groups;
    p.weight = floats(what, groups * panels(out / groups) * (in / groups) * kPanel);
    p.bias = floats(what, out);
    if (has_map) {
      p.column_map = next_tensor(what, at::kInt, out).const_data_ptr<int32_t>();
    }
    return p;
  }

  DepthwiseConv depthwise(const char* what, int64_t in, int64_t mult, int64_t stride) {
    TORCH_CHECK_VALUE(mult > 0 && (stride == 1 || stride == 2), "config: ", what,
                      " has multiplier ", mult, " and stride ", stride);
    DepthwiseConv d;
    d.in = in;
    d.mult = mult;
    d.stride = stride;
    d.weight = floats(what, mult * 9 * in);
    d.bias = floats(what, mult * in);
    return d;
  }

  Mobile2FormerWeights mobile2former(int64_t dim, int64_t channels, int64_t heads) {
    TORCH_CHECK_VALUE(heads > 0 && channels % heads == 0, "config: Mobile->Former with ",
                      channels, " channels and ", heads, " heads");
    Mobile2FormerWeights m;
    m.query_gate = linear("Mobile->Former query|gate", dim, 2 * channels);
    m.proj = linear("Mobile->Former proj", channels, dim);
    m.norm = norm("Mobile->Former norm", dim);
    m.heads = heads;
    return m;
  }

  void finish() {
    TORCH_CHECK_VALUE(ci_ == config_.size(), "config: ", config_.size() - ci_,
                      " integers left over");
    TORCH_CHECK_VALUE(wi_ == weights_.size(), "weights: ", weights_.size() - wi_,
                      " tensors left over");
  }

 private:
  at::TensorList weights_;
  at::IntArrayRef config_;
  size_t wi_ = 0, ci_ = 0;
};

BlockTokenWeights block_tokens(Reader& r, int64_t d, const Block& b, int64_t former_heads) {
  BlockTokenWeights t;
  t.m2f = r.mobile2former(d, b.in, b.bridge_heads);
  TORCH_CHECK_VALUE(former_heads > 0 && d % former_heads == 0, "config: Former with ", d,
                    " dims and ", former_heads, " heads");
  t.former.heads = former_heads;
  t.former.query = r.linear("Former query", d, d);
  t.former.channel_mlp = r.linear("Former channel_mlp", d, d);
  t.former.norm1 = r.norm("Former norm1", d);
  t.former.ffn1 = r.linear("Former ffn1", d, 2 * d);
  t.former.ffn2 = r.linear("Former ffn2", 2 * d, d);
  t.former.norm2 = r.norm("Former norm2", d);
  const int64_t hidden1 = b.kind == BlockKind::kStride1 ? b.pw1.out : b.dw1.in * b.dw1.mult;
  const int64_t hidden2 = b.kind == BlockKind::kStride1 ? b.pw1.out : b.dw2.in * b.dw2.mult;
  t.hyper_first = r.linear("hyper-MLPs' first Linears", d, 2 * (d / 4));
  t.hyper1 = r.linear("hyper-MLP 1", d / 4, 2 * hidden1);
  t.hyper2 = r.linear("hyper-MLP 2", d / 4, 2 * hidden2);
  t.key_value = r.linear("Former->Mobile key|value", d, 2 * b.out);
  return t;
}

Block block(Reader& r, int64_t d) {
  Block b;
  const int64_t kind = r.next_int("block kind");
  TORCH_CHECK_VALUE(kind >= 0 && kind <= 2, "config: unknown block kind ", kind);
  b.kind = static_cast<BlockKind>(kind);
  b.in = r.next_int("block in");
  b.out = r.next_int("block out");
  b.skip = r.next_int("block skip") != 0;
  b.bridge_heads = r.next_int("bridge heads");
  const int64_t former_heads = r.next_int("former heads");
  const int64_t dw1_mult = r.next_int("dw1 mult"), dw1_stride = r.next_int("dw1 stride");
  const int64_t dw2_mult = r.next_int("dw2 mult");
  const int64_t pw1_out = r.next_int("pw1 out"), pw1_groups = r.next_int("pw1 groups");
  const bool pw1_map = r.next_int("pw1 map") != 0;
  const int64_t pw2_groups = r.next_int("pw2 groups");
  const bool pw2_map = r.next_int("pw2 map") != 0;
  TORCH_CHECK_VALUE(b.in > 0 && b.out > 0, "config: block of ", b.in, " -> ", b.out,
                    " channels");
  if (b.kind == BlockKind::kStride1) {
    b.pw1.out = pw1_out;  // the hidden width, needed by the hyper-MLP sizes
  } else {
    b.dw1.in = b.in;
    b.dw1.mult = dw1_mult;
    if (b.kind == BlockKind::kDown) {
      b.dw2.in = b.out;
      b.dw2.mult = dw2_mult;
    }
  }
  if (b.kind != BlockKind::kLite) b.tokens = block_tokens(r, d, b, former_heads);
  switch (b.kind) {
    case BlockKind::kLite:
      b.dw1 = r.depthwise("lite dw", b.in, dw1_mult, dw1_stride);
      b.pw1 = r.pointwise("lite pw", b.in * dw1_mult, b.out, pw1_groups, pw1_map);
      break;
    case BlockKind::kStride1:
      b.pw1 = r.pointwise("block pw1", b.in, pw1_out, pw1_groups, pw1_map);
      b.dw1 = r.depthwise("block dw", pw1_out, 1, 1);
      b.pw2 = r.pointwise("block pw2", pw1_out, b.out, pw2_groups, pw2_map);
      break;
    case BlockKind::kDown:
      b.dw1 = r.depthwise("down dw1", b.in, dw1_mult, 2);
      b.pw1 = r.pointwise("down pw1", b.in * dw1_mult, b.out, pw1_groups, false);
      b.dw2 = r.depthwise("down dw2", b.out, dw2_mult, 1);
      b.pw2 = r.pointwise("down pw2", b.out * dw2_mult, b.out, pw2_groups, false);
      break;
  }
  TORCH_CHECK_VALUE(!b.skip || b.kind == BlockKind::kDown || b.in == b.out,
                    "config: a skip connection needs in == out, got ", b.in, " -> ", b.out);
  return b;
}

}  // namespace

Network parse_network(at::TensorList weights, at::IntArrayRef config) {
  Reader r(weights, config);
  TORCH_CHECK_VALUE(r.next_int("version") == kFormatVersion, "config: expected format version ",
                    kFormatVersion, "; freeze the model again with this mf_kernels");
  Network n;
  n.tokens = r.next_int("tokens");
  n.dim = r.next_int("dim");
  n.classes = r.next_int("classes");
  const int64_t blocks = r.next_int("blocks");
  const int64_t stem = r.next_int("stem channels");
  TORCH_CHECK_VALUE(n.tokens > 0 && n.dim > 0 && n.dim % 4 == 0 && n.classes > 0 &&
                        blocks > 0 && stem > 0,
                    "config: bad header (tokens ", n.tokens, ", dim ", n.dim, ", classes ",
                    n.classes, ", blocks ", blocks, ", stem ", stem, ")");
  n.initial_tokens = r.floats("initial tokens", n.tokens * n.dim);
  n.stem = r.linear("stem", 27, stem);
  int64_t channels = stem;
  for (int64_t i = 0; i < blocks; ++i) {
    n.blocks.push_back(block(r, n.dim));
    TORCH_CHECK_VALUE(n.blocks.back().in == channels, "config: block ", i, " takes ",
                      n.blocks.back().in, " channels, its input has ", channels);
    channels = n.blocks.back().out;
  }
  Head& h = n.head;
  const int64_t heads = r.next_int("head bridge heads");
  const bool input_map = r.next_int("head input map") != 0;
  const int64_t conv_out = r.next_int("head conv out"), groups = r.next_int("head groups");
  const int64_t width = r.next_int("head width");
  h.m2f = r.mobile2former(n.dim, channels, heads);
  if (input_map) h.input_map = r.next_tensor("head map", at::kInt, channels).const_data_ptr<int32_t>();
  h.conv = r.pointwise("head conv", channels, conv_out, groups, false);
  h.fc1 = r.linear("head fc1", conv_out + n.dim, width);
  h.fc2 = r.linear("head fc2", width, n.classes);
  r.finish();
  return n;
}

}  // namespace frozen
}  // namespace mf_kernels

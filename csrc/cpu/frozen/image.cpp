// One image through a frozen Mobile-Former (image.h). The stages mirror the reference blocks
// (mobileformer/blocks.py) with BatchNorm folded and every activation fused into the
// convolution that produces its input.
#include "image.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>

#include "tokens.h"

namespace mf_kernels {
namespace frozen {
namespace {

// A 3x3 convolution with padding 1.
int64_t conv_out(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }

// Rows per task when a stage is split over threads (a no-op inside a parallel region, such
// as when the batch is split over threads instead).
constexpr int64_t kGemmGrain = 48;
constexpr int64_t kDepthwiseGrain = 4;

// Slack after every buffer: vector loads of the last tail may touch (not use) a few floats
// past a map's end.
constexpr int64_t kSlack = 64;

}  // namespace

Geometry::Geometry(const Network& n, int64_t h, int64_t w) : height(h), width(w) {
  const auto grow = [](int64_t& floats, int64_t positions, int64_t channels) {
    floats = std::max(floats, positions * channels);
  };
  const auto grow_attention = [&](int64_t positions, int64_t channels) {
    attention_floats =
        std::max(attention_floats, attention_scratch_floats(positions, n.tokens, channels));
  };
  int64_t max_channels = n.blocks.empty() ? 0 : n.blocks.front().in;
  h = conv_out(h, 2);
  w = conv_out(w, 2);
  grow(map_floats, h * w, n.stem.out);
  for (const Block& b : n.blocks) {
    max_channels = std::max({max_channels, b.in, b.out});
    max_out = std::max(max_out, b.out);
    if (b.kind != BlockKind::kLite) grow_attention(h * w, b.in);
    if (b.kind == BlockKind::kStride1) {
      grow(temp_floats[0], h * w, b.pw1.out);
      grow(temp_floats[1], h * w, b.pw1.out);
      hidden = std::max(hidden, b.pw1.out);
    } else {
      h = conv_out(h, b.dw1.stride);
      w = conv_out(w, b.dw1.stride);
      grow(temp_floats[0], h * w, b.dw1.in * b.dw1.mult);
      if (b.kind == BlockKind::kDown) {
        grow(temp_floats[1], h * w, b.out);
        grow(temp_floats[2], h * w, b.dw2.in * b.dw2.mult);
        hidden = std::max({hidden, b.dw1.in * b.dw1.mult, b.dw2.in * b.dw2.mult});
      }
    }
    grow(map_floats, h * w, b.out);
    if (b.kind != BlockKind::kLite) grow_attention(h * w, b.out);
  }
  const int64_t last = n.blocks.empty() ? n.stem.out : n.blocks.back().out;
  grow_attention(h * w, last);
  grow(temp_floats[0], h * w, last);               // the head's shuffled input (MF-26M)
  grow(temp_floats[1], h * w, n.head.conv.out);    // the head's convolution
  token_floats = token_scratch_floats(n.tokens, n.dim, max_channels);
  feature_dim = n.head.conv.out + n.dim;
}

int64_t Geometry::workspace_floats(const Network& n) const {
  return 2 * (map_floats + kSlack) + temp_floats[0] + temp_floats[1] + temp_floats[2] +
         3 * kSlack + attention_floats + token_floats + n.tokens * n.dim +
         2 * (2 * hidden + kSlack) + n.tokens * 2 * max_out + 6 * kSlack;
}

ImageRunner::ImageRunner(const KernelTable& t, const Network& n, const Geometry& g,
                         float* workspace)
    : t_(t), n_(n), input_height_(g.height), input_width_(g.width) {
  float* p = workspace;
  const auto take = [&](int64_t floats) {
    float* q = p;
    p += floats + kSlack;
    return q;
  };
  map_ = take(g.map_floats);
  next_ = take(g.map_floats);
  temp0_ = take(g.temp_floats[0]);
  temp1_ = take(g.temp_floats[1]);
  temp2_ = take(g.temp_floats[2]);
  attention_ = take(g.attention_floats);
  token_scratch_ = take(g.token_floats);
  z_ = take(n.tokens * n.dim);
  slopes1_ = take(2 * g.hidden);
  slopes2_ = take(2 * g.hidden);
  key_value_ = take(n.tokens * 2 * g.max_out);
}

void ImageRunner::run(const Image& image, float* features) {
  std::copy(n_.initial_tokens, n_.initial_tokens + n_.tokens * n_.dim, z_);
  stem(image);
  for (const Block& b : n_.blocks) {
    switch (b.kind) {
      case BlockKind::kLite: lite(b); break;
      case BlockKind::kStride1: stride1(b); break;
      case BlockKind::kDown: down(b); break;
    }
  }
  head(features);
}

// conv 3x3 / 2 (3 -> C0) + bias + ReLU6: each task gathers its output rows' 27 taps per
// pixel (im2row) and runs them as one GEMM against the packed [27, C0] weight.
void ImageRunner::stem(const Image& image) {
  const int64_t H = input_height_, W = input_width_;
  height_ = conv_out(H, 2);
  width_ = conv_out(W, 2);
  channels_ = n_.stem.out;
  const int64_t OW = width_;
  float* out = map_;
  at::parallel_for(0, height_, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(OW * 27);
    for (int64_t oy = begin; oy < end; ++oy) {
      for (int64_t ox = 0; ox < OW; ++ox) {
        float* tap = rows.data() + ox * 27;
        for (int64_t ky = 0; ky < 3; ++ky) {
          const int64_t iy = 2 * oy + ky - 1;
          for (int64_t kx = 0; kx < 3; ++kx, tap += 3) {
            const int64_t ix = 2 * ox + kx - 1;
            const bool inside = iy >= 0 && iy < H && ix >= 0 && ix < W;
            const float* px = image.pixels + iy * image.stride_h + ix * image.stride_w;
            for (int64_t c = 0; c < 3; ++c) tap[c] = inside ? px[c * image.stride_c] : 0.0f;
          }
        }
      }
      Gemm g;
      g.a = rows.data();
      g.a_row_stride = 27;
      g.b = n_.stem.weight;
      g.b_panel_stride = 27 * kPanel;
      g.c = out + oy * OW * channels_;
      g.ldc = channels_;
      g.rows = OW;
      g.depth = 27;
      g.cols = channels_;
      g.epilogue.bias = n_.stem.bias;
      g.epilogue.act = Activation::kRelu6;
      t_.gemm(g, 0, OW);
    }
  });
}

void ImageRunner::pointwise(const PointwiseConv& pw, const float* x, int64_t positions,
                            float* y, Activation act, const float* slopes,
                            const float* residual) {
  const int64_t kg = pw.in / pw.groups, ng = pw.out / pw.groups;
  const int64_t group_floats = (ng + kPanel - 1) / kPanel * kg * kPanel;
  at::parallel_for(0, positions, kGemmGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = 0; i < pw.groups; ++i) {
      Gemm g;
      g.a = x + i * kg;
      g.a_row_stride = pw.in;
      g.b = pw.weight + i * group_floats;
      g.b_panel_stride = kg * kPanel;
      g.ldc = pw.out;
      g.rows = positions;
      g.depth = kg;
      g.cols = ng;
      Epilogue& e = g.epilogue;
      e.bias = pw.bias + i * ng;
      e.act = act;
      if (act == Activation::kDynamicRelu) {
        e.slope1 = slopes + i * ng;
        e.slope2 = slopes + pw.out + i * ng;
      }
      e.ld_residual = pw.out;
      if (pw.column_map) {  // the store scatters to absolute channels
        e.column_map = pw.column_map + i * ng;
        g.c = y;
        e.residual = residual;
      } else {
        g.c = y + i * ng;
        e.residual = residual ? residual + i * ng : nullptr;
      }
      t_.gemm(g, begin, end);
    }
  });
}

void ImageRunner::depthwise(const DepthwiseConv& dw, const float* x, int64_t out_height,
                            int64_t out_width, float* y, Activation act,
                            const float* slopes) {
  const int64_t n = dw.in * dw.mult;
  at::parallel_for(0, out_height, kDepthwiseGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = 0; j < dw.mult; ++j) {
      Depthwise d;
      d.x = x;
      d.height = height_;
      d.width = width_;
      d.ldx = dw.in;
      d.w = dw.weight + j * 9 * dw.in;
      d.y = y + j * dw.in;
      d.out_height = out_height;
      d.out_width = out_width;
      d.ldy = n;
      d.stride = dw.stride;
      d.channels = dw.in;
      d.epilogue.bias = dw.bias + j * dw.in;
      d.epilogue.act = act;
      if (act == Activation::kDynamicRelu) {
        d.epilogue.slope1 = slopes + j * dw.in;
        d.epilogue.slope2 = slopes + n + j * dw.in;
      }
      t_.depthwise(d, begin, end);
    }
  });
}

void ImageRunner::tokens(const Block& b) {
  TokenOutputs out;
  out.slopes1 = slopes1_;
  out.slopes2 = slopes2_;
  out.key_value = key_value_;
  block_tokens(t_, b.tokens, map_, height_ * width_, channels_, z_, n_.tokens, n_.dim, out,
               token_scratch_, attention_);
}

// y [P, C_out] <- y + attention(y, keys, values), in place.
void ImageRunner::former2mobile(const Block& b, float* y) {
  if (height_ * width_ == 0) return;
  Attention a;
  a.x = y;
  a.positions = height_ * width_;
  a.channels = b.out;
  a.ldx = b.out;
  a.tokens = n_.tokens;
  a.heads = b.bridge_heads;
  a.q = key_value_;
  a.v = key_value_ + b.out;
  a.ldt = 2 * b.out;
  a.out = y;
  a.scratch = attention_;
  t_.f2m_attention(a);
}

void ImageRunner::lite(const Block& b) {
  const int64_t oh = conv_out(height_, b.dw1.stride), ow = conv_out(width_, b.dw1.stride);
  depthwise(b.dw1, map_, oh, ow, temp0_, Activation::kRelu6, nullptr);
  pointwise(b.pw1, temp0_, oh * ow, next_, Activation::kNone, nullptr,
            b.skip ? map_ : nullptr);
  height_ = oh;
  width_ = ow;
  channels_ = b.out;
  swap_maps();
}

void ImageRunner::stride1(const Block& b) {
  tokens(b);
  const int64_t P = height_ * width_;
  pointwise(b.pw1, map_, P, temp0_, Activation::kDynamicRelu, slopes1_, nullptr);
  depthwise(b.dw1, temp0_, height_, width_, temp1_, Activation::kDynamicRelu, slopes2_);
  pointwise(b.pw2, temp1_, P, next_, Activation::kNone, nullptr, b.skip ? map_ : nullptr);
  channels_ = b.out;
  former2mobile(b, next_);
  swap_maps();
}

void ImageRunner::down(const Block& b) {
  tokens(b);
  const int64_t oh = conv_out(height_, b.dw1.stride), ow = conv_out(width_, b.dw1.stride);
  depthwise(b.dw1, map_, oh, ow, temp0_, Activation::kDynamicRelu, slopes1_);
  height_ = oh;
  width_ = ow;
  const int64_t P = oh * ow;
  float* r = temp1_;
  pointwise(b.pw1, temp0_, P, r, Activation::kNone, nullptr, nullptr);
  depthwise(b.dw2, r, oh, ow, temp2_, Activation::kDynamicRelu, slopes2_);
  pointwise(b.pw2, temp2_, P, next_, Activation::kNone, nullptr, r);
  channels_ = b.out;
  former2mobile(b, next_);
  swap_maps();
}

void ImageRunner::head(float* features) {
  const Head& h = n_.head;
  const int64_t P = height_ * width_, C = channels_;
  mobile2former(t_, h.m2f, map_, P, C, C, z_, n_.tokens, n_.dim, token_scratch_, attention_);
  const float* input = map_;
  if (h.input_map) {  // MF-26M's channel shuffle before the grouped convolution
    for (int64_t p = 0; p < P; ++p) {
      for (int64_t c = 0; c < C; ++c) temp0_[p * C + c] = map_[p * C + h.input_map[c]];
    }
    input = temp0_;
  }
  pointwise(h.conv, input, P, temp1_, Activation::kRelu6, nullptr, nullptr);
  // Global average pool, then h-swish: x relu6(x + 3) / 6.
  const int64_t F = h.conv.out;
  std::fill(features, features + F, 0.0f);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t c = 0; c < F; ++c) features[c] += temp1_[p * F + c];
  }
  const float inv = P > 0 ? 1.0f / static_cast<float>(P) : 0.0f;
  for (int64_t c = 0; c < F; ++c) {
    const float v = features[c] * inv;
    features[c] = v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f;
  }
  std::copy(z_, z_ + n_.dim, features + F);  // token 0
}

}  // namespace frozen
}  // namespace mf_kernels

// Depthwise 3x3 convolution of the frozen CPU path (see Depthwise in kernels.h), compiled
// once per instruction set. NO include guard: included by kernels_isa.h after simd.h.
//
//   y[oy, ox, c] = epilogue( sum_{ky,kx} w[3 ky + kx, c] x[s oy + ky - 1, s ox + kx - 1, c] )
//
// NHWC, vectorised over channels (XNNPACK's "channel tile"): for one output row and one
// vector of channels, the nine weight vectors, the bias and the dynamic-ReLU slopes stay in
// registers while the row is swept. Interior pixels read all nine taps with no bounds
// checks; only the first and last pixel of a row and the first and last row look at the
// padding. The epilogue (bias, ReLU6 or dynamic ReLU) runs before the store, so the
// convolution's output is written once, activated.

struct DepthwiseVectors {
  V w[9];
  V bias{}, slope1{}, slope2{};
};

inline V depthwise_activate(const Epilogue& e, const DepthwiseVectors& k, V y) {
  if (e.act == Activation::kRelu6) {
    const V zero{}, six = vset(6.0f);
    y = y < zero ? zero : y;
    return y > six ? six : y;
  }
  if (e.act == Activation::kDynamicRelu) {
    const V a = y * k.slope1, b = y * k.slope2;
    return a > b ? a : b;
  }
  return y;
}

// One output pixel whose taps may fall outside the map (edges and tiny maps).
inline V depthwise_edge_pixel(const Depthwise& d, const DepthwiseVectors& k, int64_t oy,
                              int64_t ox, int64_t c, int64_t n) {
  V acc = k.bias;
  for (int64_t ky = 0; ky < 3; ++ky) {
    const int64_t iy = d.stride * oy + ky - 1;
    if (iy < 0 || iy >= d.height) continue;
    for (int64_t kx = 0; kx < 3; ++kx) {
      const int64_t ix = d.stride * ox + kx - 1;
      if (ix < 0 || ix >= d.width) continue;
      acc += k.w[ky * 3 + kx] * load_n(d.x + (iy * d.width + ix) * d.ldx + c, n);
    }
  }
  return acc;
}

// Interior pixels [ox0, ox1) of output row oy, whose three input rows all exist, for one
// vector of n channels at c. kStride is the convolution's stride.
template <int kStride>
inline void depthwise_interior(const Depthwise& d, const DepthwiseVectors& k, int64_t oy,
                               int64_t ox0, int64_t ox1, int64_t c, int64_t n) {
  const int64_t row = d.width * d.ldx;
  const float* x = d.x + ((kStride * oy - 1) * d.width + kStride * ox0 - 1) * d.ldx + c;
  float* y = d.y + (oy * d.out_width + ox0) * d.ldy + c;
  for (int64_t ox = ox0; ox < ox1; ++ox, x += kStride * d.ldx, y += d.ldy) {
    V acc = k.bias;
#pragma GCC unroll 3
    for (int ky = 0; ky < 3; ++ky) {
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
        acc += k.w[ky * 3 + kx] * load_n(x + ky * row + kx * d.ldx, n);
      }
    }
    store_n(y, depthwise_activate(d.epilogue, k, acc), n);
  }
}

template <int kStride>
void depthwise_rows(const Depthwise& d, int64_t row_begin, int64_t row_end) {
  const Epilogue& e = d.epilogue;
  // Output columns whose three input columns are inside the map.
  const int64_t ox_first = 1;
  const int64_t ox_last = std::min(d.out_width, (d.width - 2) / kStride + 1);  // exclusive
  for (int64_t c = 0; c < d.channels; c += L) {
    const int64_t n = std::min(L, d.channels - c);
    DepthwiseVectors k;
    for (int t = 0; t < 9; ++t) k.w[t] = load_n(d.w + t * d.channels + c, n);
    k.bias = e.bias ? load_n(e.bias + c, n) : V{};
    if (e.act == Activation::kDynamicRelu) {
      k.slope1 = load_n(e.slope1 + c, n);
      k.slope2 = load_n(e.slope2 + c, n);
    }
    for (int64_t oy = row_begin; oy < row_end; ++oy) {
      const bool inner_row = kStride * oy - 1 >= 0 && kStride * oy + 1 < d.height;
      for (int64_t ox = 0; ox < d.out_width; ++ox) {
        if (inner_row && ox == ox_first && ox_first < ox_last) {
          depthwise_interior<kStride>(d, k, oy, ox_first, ox_last, c, n);
          ox = ox_last - 1;
          continue;
        }
        const V acc = depthwise_edge_pixel(d, k, oy, ox, c, n);
        store_n(d.y + (oy * d.out_width + ox) * d.ldy + c, depthwise_activate(e, k, acc), n);
      }
    }
  }
}

void depthwise(const Depthwise& d, int64_t row_begin, int64_t row_end) {
  if (d.stride == 1) {
    depthwise_rows<1>(d, row_begin, row_end);
  } else {
    depthwise_rows<2>(d, row_begin, row_end);
  }
}

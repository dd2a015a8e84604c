// Depthwise 3x3 convolution of the frozen CPU path (see Depthwise in kernels.h), compiled
// once per instruction set. NO include guard: included by kernels_isa.h after simd.h.
//
//   y[oy, ox, c] = epilogue( sum_{ky,kx} w[3 ky + kx, c] x[s oy + ky - 1, s ox + kx - 1, c] )
//
// NHWC, vectorised over channels (XNNPACK's "channel tile"): for one vector of channels the
// nine weight vectors, the bias and the dynamic-ReLU slopes stay in registers while the
// output rows are swept. Interior pixels read all nine taps with no bounds checks, four
// pixels at a time: one pixel's nine taps are a chain of dependent FMAs, four chains keep
// the FMA units busy. Only the first and last pixel of a row and the first and last row
// look at the padding. The activation and the full/partial vector choice are template
// parameters, so the inner loop has no branches; the epilogue runs before the store.

struct DepthwiseVectors {
  V w[9];
  V bias{}, slope1{}, slope2{};
};

template <Activation kAct>
inline V depthwise_activate(const DepthwiseVectors& k, V y) {
  if (kAct == Activation::kRelu6) {
    const V zero{}, six = vset(6.0f);
    y = y < zero ? zero : y;
    return y > six ? six : y;
  }
  if (kAct == Activation::kDynamicRelu) {
    const V a = y * k.slope1, b = y * k.slope2;
    return a > b ? a : b;
  }
  return y;
}

// n lanes (n == L when kFull) at p.
template <bool kFull>
inline V load_lanes(const float* p, int64_t n) {
  return kFull ? vload(p) : load_first(p, n);
}
template <bool kFull>
inline void store_lanes(float* p, V v, int64_t n) {
  if (kFull) {
    vstore(p, v);
  } else {
    store_first(p, v, n);
  }
}

// One output pixel whose taps may fall outside the map (edges and tiny maps).
template <Activation kAct, bool kFull>
inline void depthwise_edge_pixel(const Depthwise& d, const DepthwiseVectors& k, int64_t oy,
                                 int64_t ox, int64_t c, int64_t n) {
  V acc = k.bias;
  for (int64_t ky = 0; ky < 3; ++ky) {
    const int64_t iy = d.stride * oy + ky - 1;
    if (iy < 0 || iy >= d.height) continue;
    for (int64_t kx = 0; kx < 3; ++kx) {
      const int64_t ix = d.stride * ox + kx - 1;
      if (ix < 0 || ix >= d.width) continue;
      acc += k.w[ky * 3 + kx] * load_lanes<kFull>(d.x + (iy * d.width + ix) * d.ldx + c, n);
    }
  }
  store_lanes<kFull>(d.y + (oy * d.out_width + ox) * d.ldy + c, depthwise_activate<kAct>(k, acc),
                     n);
}

// Interior pixels [ox0, ox1) of output row oy, whose three input rows and columns all exist,
// for one vector of n channels at c.
template <int kStride, Activation kAct, bool kFull>
inline void depthwise_interior(const Depthwise& d, const DepthwiseVectors& k, int64_t oy,
                               int64_t ox0, int64_t ox1, int64_t c, int64_t n) {
  constexpr int kPixels = 4;
  const int64_t row = d.width * d.ldx, step = kStride * d.ldx;
  const float* x = d.x + ((kStride * oy - 1) * d.width + kStride * ox0 - 1) * d.ldx + c;
  float* y = d.y + (oy * d.out_width + ox0) * d.ldy + c;
  int64_t ox = ox0;
  for (; ox + kPixels <= ox1; ox += kPixels, x += kPixels * step, y += kPixels * d.ldy) {
    V acc[kPixels];
#pragma GCC unroll 4
    for (int i = 0; i < kPixels; ++i) acc[i] = k.bias;
#pragma GCC unroll 3
    for (int ky = 0; ky < 3; ++ky) {
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
        const V w = k.w[ky * 3 + kx];
#pragma GCC unroll 4
        for (int i = 0; i < kPixels; ++i) {
          acc[i] += w * load_lanes<kFull>(x + ky * row + kx * d.ldx + i * step, n);
        }
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < kPixels; ++i) {
      store_lanes<kFull>(y + i * d.ldy, depthwise_activate<kAct>(k, acc[i]), n);
    }
  }
  for (; ox < ox1; ++ox, x += step, y += d.ldy) {
    V acc = k.bias;
#pragma GCC unroll 3
    for (int ky = 0; ky < 3; ++ky) {
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
        acc += k.w[ky * 3 + kx] * load_lanes<kFull>(x + ky * row + kx * d.ldx, n);
      }
    }
    store_lanes<kFull>(y, depthwise_activate<kAct>(k, acc), n);
  }
}

// Output rows [row_begin, row_end) for one vector of n channels at c.
template <int kStride, Activation kAct, bool kFull>
void depthwise_channels(const Depthwise& d, int64_t row_begin, int64_t row_end, int64_t c,
                        int64_t n) {
  const Epilogue& e = d.epilogue;
  DepthwiseVectors k;
  for (int t = 0; t < 9; ++t) k.w[t] = load_lanes<kFull>(d.w + t * d.channels + c, n);
  if (e.bias) k.bias = load_lanes<kFull>(e.bias + c, n);
  if (kAct == Activation::kDynamicRelu) {
    k.slope1 = load_lanes<kFull>(e.slope1 + c, n);
    k.slope2 = load_lanes<kFull>(e.slope2 + c, n);
  }
  // Output columns whose three input columns are inside the map: [1, ox_end).
  const int64_t ox_end = std::min(d.out_width, (d.width - 2) / kStride + 1);
  for (int64_t oy = row_begin; oy < row_end; ++oy) {
    const bool inner_row = kStride * oy - 1 >= 0 && kStride * oy + 1 < d.height;
    if (!inner_row || ox_end <= 1) {
      for (int64_t ox = 0; ox < d.out_width; ++ox) {
        depthwise_edge_pixel<kAct, kFull>(d, k, oy, ox, c, n);
      }
      continue;
    }
    depthwise_edge_pixel<kAct, kFull>(d, k, oy, 0, c, n);
    depthwise_interior<kStride, kAct, kFull>(d, k, oy, 1, ox_end, c, n);
    for (int64_t ox = ox_end; ox < d.out_width; ++ox) {
      depthwise_edge_pixel<kAct, kFull>(d, k, oy, ox, c, n);
    }
  }
}

template <int kStride, Activation kAct>
void depthwise_rows(const Depthwise& d, int64_t row_begin, int64_t row_end) {
  int64_t c = 0;
  for (; c + L <= d.channels; c += L) {
    depthwise_channels<kStride, kAct, true>(d, row_begin, row_end, c, L);
  }
  if (c < d.channels) {
    depthwise_channels<kStride, kAct, false>(d, row_begin, row_end, c, d.channels - c);
  }
}

template <int kStride>
void depthwise_stride(const Depthwise& d, int64_t row_begin, int64_t row_end) {
  switch (d.epilogue.act) {
    case Activation::kRelu6:
      depthwise_rows<kStride, Activation::kRelu6>(d, row_begin, row_end);
      break;
    case Activation::kDynamicRelu:
      depthwise_rows<kStride, Activation::kDynamicRelu>(d, row_begin, row_end);
      break;
    default:
      depthwise_rows<kStride, Activation::kNone>(d, row_begin, row_end);
      break;
  }
}

void depthwise(const Depthwise& d, int64_t row_begin, int64_t row_end) {
  if (d.stride == 1) {
    depthwise_stride<1>(d, row_begin, row_end);
  } else {
    depthwise_stride<2>(d, row_begin, row_end);
  }
}

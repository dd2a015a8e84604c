// Moving data between the tensors and the accumulation-type buffers of the CPU attention
// kernels: token slices, and [K, n] tiles of a feature map (K channels of one head, n
// positions). Compiled once per instruction set like attention_simd.h (NO include guard, NO
// includes; include it after attention_simd.h, inside the per-ISA namespace).
//
// The kernels want positions as the unit stride. NCHW fp32 tiles are used in place; channels_
// last tiles are transposed on the way in and out, fp32 ones by blocks of lanes x lanes held in
// vector registers (a scalar transpose made channels_last maps about twice as slow as NCHW).

// The [M, ch] slice of head h of a [B, M, C] token tensor as T, times `mul`.
template <typename S, typename T>
inline void gather_tokens(const S* t, const attention::Problem& n, int64_t b, int64_t h, T mul,
                          T* dst) {
  for (int64_t m = 0; m < n.M; ++m) {
    const S* row = t + (b * n.M + m) * n.C + h * n.ch;
    for (int64_t c = 0; c < n.ch; ++c) dst[m * n.ch + c] = static_cast<T>(row[c]) * mul;
  }
}

inline int64_t padded_length(int64_t len) {
  return (len + attention::kTileQuantum - 1) / attention::kTileQuantum * attention::kTileQuantum;
}

#if defined(__clang__)
#define MF_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define MF_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, VecOf<float>::itype{__VA_ARGS__})
#endif

// In-register transpose of a lanes x lanes block of floats: r[i][j] -> r[j][i]. Returns false
// where no transpose is written for this vector width (the callers then go scalar).
inline bool transpose_block(Vec<float>* r) {
#if MF_VEC_BYTES == 32
  Vec<float> t[8], u[8];
  for (int i = 0; i < 8; i += 2) {  // interleave pairs of rows
    t[i] = MF_SHUFFLE(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = MF_SHUFFLE(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs
    u[i] = MF_SHUFFLE(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = MF_SHUFFLE(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = MF_SHUFFLE(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = MF_SHUFFLE(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int j = 0; j < 4; ++j) {  // then the 128-bit halves
    r[j] = MF_SHUFFLE(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[j + 4] = MF_SHUFFLE(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
  return true;
#elif MF_VEC_BYTES == 16
  const Vec<float> t0 = MF_SHUFFLE(r[0], r[1], 0, 4, 1, 5), t1 = MF_SHUFFLE(r[0], r[1], 2, 6, 3, 7);
  const Vec<float> t2 = MF_SHUFFLE(r[2], r[3], 0, 4, 1, 5), t3 = MF_SHUFFLE(r[2], r[3], 2, 6, 3, 7);
  r[0] = MF_SHUFFLE(t0, t2, 0, 1, 4, 5);
  r[1] = MF_SHUFFLE(t0, t2, 2, 3, 6, 7);
  r[2] = MF_SHUFFLE(t1, t3, 0, 1, 4, 5);
  r[3] = MF_SHUFFLE(t1, t3, 2, 3, 6, 7);
  return true;
#else
  (void)r;
  return false;
#endif
}
#undef MF_SHUFFLE

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols; fp32 by vector blocks.
template <typename S, typename D>
inline void transpose_copy(const S* src, int64_t lds, int64_t rows, int64_t cols, D* dst,
                           int64_t ldd) {
  constexpr int64_t L = lanes<float>();
  int64_t i0 = 0, j0 = 0;
  if (std::is_same<S, float>::value && std::is_same<D, float>::value) {
    const float* s = reinterpret_cast<const float*>(src);
    float* d = reinterpret_cast<float*>(dst);
    Vec<float> r[L];
    for (; i0 + L <= rows; i0 += L) {
      for (j0 = 0; j0 + L <= cols; j0 += L) {
        for (int64_t i = 0; i < L; ++i) r[i] = vload(s + (i0 + i) * lds + j0);
        if (!transpose_block(r)) break;
        for (int64_t j = 0; j < L; ++j) vstore(d + (j0 + j) * ldd + i0, r[j]);
      }
      for (int64_t i = i0; i < i0 + L; ++i)  // the columns right of the last full block
        for (int64_t j = j0; j < cols; ++j) dst[j * ldd + i] = static_cast<D>(src[i * lds + j]);
    }
  }
  for (int64_t i = i0; i < rows; ++i)  // the rows below the last full block (all, if scalar)
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = static_cast<D>(src[i * lds + j]);
}

// The tile x[c, p0 + t] (c < K, t < len) as a [K, ld] buffer of T. Read in place when it
// already is one (T inputs, positions unit-stride, a full tile); otherwise copied into `buf`
// (converted, transposed for channels_last, zero-padded up to `padded`).
template <typename S, typename T>
inline const T* load_tile(const S* x, int64_t sC, int64_t sP, int64_t K, int64_t len,
                          int64_t padded, T* buf, int64_t* ld) {
  if (std::is_same<S, T>::value && sP == 1 && len == padded) {
    *ld = sC;
    return reinterpret_cast<const T*>(x);
  }
  *ld = padded;
  if (sP == 1) {
    for (int64_t c = 0; c < K; ++c) {
      for (int64_t t = 0; t < len; ++t) buf[c * padded + t] = static_cast<T>(x[c * sC + t]);
    }
  } else {  // channels_last (sC = 1): rows of channels, transposed into rows of positions
    transpose_copy(x, sP, len, K, buf, padded);
  }
  if (len < padded) {
    for (int64_t c = 0; c < K; ++c) std::fill(buf + c * padded + len, buf + (c + 1) * padded, T(0));
  }
  return buf;
}

// Where a [K, n] result tile goes: straight into y when it has that layout, else `buf`
// (then store_tile copies it out).
template <typename S, typename T>
inline T* tile_target(S* y, int64_t sC, int64_t sP, int64_t len, int64_t padded, T* buf,
                      int64_t* ld) {
  if (std::is_same<S, T>::value && sP == 1 && len == padded) {
    *ld = sC;
    return reinterpret_cast<T*>(y);
  }
  *ld = padded;
  return buf;
}

template <typename S, typename T>
inline void store_tile(const T* buf, int64_t ld, S* y, int64_t sC, int64_t sP, int64_t K,
                       int64_t len) {
  if (reinterpret_cast<const void*>(buf) == reinterpret_cast<const void*>(y)) return;
  if (sP == 1) {
    for (int64_t c = 0; c < K; ++c)
      for (int64_t t = 0; t < len; ++t) y[c * sC + t] = static_cast<S>(buf[c * ld + t]);
  } else {  // channels_last (sC = 1)
    transpose_copy(buf, ld, K, len, y, sP);
  }
}

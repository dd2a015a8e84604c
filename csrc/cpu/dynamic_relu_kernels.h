// Inner kernels of dynamic ReLU (dynamic_relu.cpp), compiled once per instruction set.
//
// NO include guard and NO includes: dynamic_relu.cpp includes this through attention_isa.h,
// inside namespace isa_base (MF_VEC_BYTES 16: SSE2/NEON) and isa_avx2 (32), after every
// library header. Vectors are GCC/Clang vector extensions (attention_simd.h's Vec, vload, hsum).
//
// One vector of L = lanes<T>() elements at a time, T the accumulation type (float; double for
// fp64). The pieces p_k = s_k*v + t_k are rounded like the reference (product, then sum; never
// an FMA), so forward and backward agree on which pieces attain the max. The backward of one
// element is the reference's autograd written out (amax backward, then the two products):
//   n = #{k : p_k == m},  w_k = (g / n) * [p_k == m],  m = max_k p_k (NaN if any piece is NaN)
//   grad_x = sum_k w_k s_k,  grad_slope_k += w_k v,  grad_intercept_k += w_k
// with IEEE semantics throughout: a NaN max gives n = 0 and g / 0 * 0 = NaN in every gradient it
// touches, as in the reference. There are no branches on the data (the sign of x decides which
// piece wins, so branches would be mispredicted half the time); the sums over positions are
// vector accumulators (in registers for NCHW planes, in an L1-resident row of partial sums for
// channels_last rows).
//
// Cfg bundles the template parameters (one type, so that MF_ISA_CALL's macro arguments have no
// commas): S the storage type, KC the number of pieces (0: any K, read at run time), kIcpt
// whether the pieces have intercepts (only K = 2 is specialised without; other K get zeros).

template <typename V>
using MaskOf = decltype(V{} < V{});  // the integer vector a comparison of V gives

// ---- Storage <-> accumulation type, L lanes at a time ----------------------------------------
// fp16 and bf16 are converted with integer vector arithmetic (no F16C needed, so the baseline
// build has them too): the bf16 rules of c10::BFloat16 and the fp16 rules of c10::Half (FP16
// library's branch-free conversions), bit for bit; tests check every fp16/bf16 value.
typedef uint16_t HalfBits __attribute__((vector_size(MF_VEC_BYTES / 2)));
typedef uint32_t FloatBits __attribute__((vector_size(MF_VEC_BYTES)));

inline Vec<float> load_lanes(const float* p) { return vload(p); }
inline Vec<double> load_lanes(const double* p) { return vload(p); }
inline void store_lanes(float* p, Vec<float> v) { vstore(p, v); }
inline void store_lanes(double* p, Vec<double> v) { vstore(p, v); }

inline HalfBits load_bits(const void* p) {
  HalfBits h;
  __builtin_memcpy(&h, p, sizeof(h));
  return h;
}
inline void store_bits(void* p, FloatBits r) {
  const HalfBits h = __builtin_convertvector(r, HalfBits);
  __builtin_memcpy(p, &h, sizeof(h));
}
inline FloatBits splat(uint32_t u) { return FloatBits{} + u; }

inline Vec<float> load_lanes(const c10::BFloat16* p) {
  return (Vec<float>)(__builtin_convertvector(load_bits(p), FloatBits) << 16);
}
// Round to nearest even; NaN becomes the quiet NaN 0x7FC0.
inline void store_lanes(c10::BFloat16* p, Vec<float> v) {
  const FloatBits u = (FloatBits)v;
  const FloatBits rounded = (u + splat(0x7FFFu) + ((u >> 16) & splat(1u))) >> 16;
  store_bits(p, v != v ? splat(0x7FC0u) : rounded);
}

// Normal numbers by moving the exponent into place and rescaling by 2^-112, subnormals by
// building 0.5 + m*2^-24 and subtracting 0.5; infinities and NaN scale to themselves.
inline Vec<float> load_lanes(const c10::Half* p) {
  const FloatBits w = __builtin_convertvector(load_bits(p), FloatBits) << 16;
  const FloatBits two_w = w + w;
  const Vec<float> normal = (Vec<float>)((two_w >> 4) + splat(0x70000000u)) * vset(0x1.0p-112f);
  const Vec<float> subnormal = (Vec<float>)((two_w >> 17) | splat(0x3F000000u)) - vset(0.5f);
  const FloatBits magnitude = two_w < splat(1u << 27) ? (FloatBits)subnormal : (FloatBits)normal;
  return (Vec<float>)((w & splat(0x80000000u)) | magnitude);
}
// Round to nearest even: scaling by 2^112 then 2^-110 overflows what fp16 cannot hold to
// infinity; adding a power of two aligned with fp16's last mantissa bit does the rounding.
inline void store_lanes(c10::Half* p, Vec<float> v) {
  const FloatBits w = (FloatBits)v;
  const FloatBits two_w = w + w;
  const Vec<float> magnitude = (Vec<float>)(w & splat(0x7FFFFFFFu));
  Vec<float> base = (magnitude * vset(0x1.0p+112f)) * vset(0x1.0p-110f);
  FloatBits bias = two_w & splat(0xFF000000u);
  bias = bias < splat(0x71000000u) ? splat(0x71000000u) : bias;
  base = (Vec<float>)((bias >> 1) + splat(0x07800000u)) + base;
  const FloatBits bits = (FloatBits)base;
  const FloatBits nonsign = ((bits >> 13) & splat(0x7C00u)) + (bits & splat(0x0FFFu));
  const FloatBits sign = (w & splat(0x80000000u)) >> 16;
  store_bits(p, sign | (two_w > splat(0xFF000000u) ? splat(0x7E00u) : nonsign));
}

// The first n < L elements, through a zero-padded buffer (the tail of a row or plane).
template <typename S>
inline auto load_tail(const S* p, int64_t n) {
  S buf[MF_VEC_BYTES / sizeof(at::opmath_type<S>)] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
  return load_lanes(buf);
}
template <typename S, typename V>
inline void store_tail(S* p, V v, int64_t n) {
  S buf[MF_VEC_BYTES / sizeof(at::opmath_type<S>)];
  store_lanes(buf, v);
  for (int64_t i = 0; i < n; ++i) p[i] = buf[i];
}

// ---- One vector of elements -------------------------------------------------------------------

// The product is kept out of an FMA (the AVX2 build would contract s*v + t): the reference
// rounds the product first.
template <bool kIcpt, typename V>
inline V piece(V s, V t, V v) {
  V product = s * v;
  if (!kIcpt) return product;
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(product));
#elif defined(__aarch64__)
  asm("" : "+w"(product));
#endif
  return product + t;
}

template <typename V>
inline V nan_max(V a, V b) {  // NaN-propagating, as torch.amax
  return (b > a) | (b != b) ? b : a;
}

template <class Cfg, typename V>
inline V max_piece(V v, const V* s, const V* t, int K) {
  V m = piece<Cfg::kIcpt>(s[0], t[0], v);
  for (int k = 1; k < Cfg::pieces(K); ++k) m = nan_max(m, piece<Cfg::kIcpt>(s[k], t[k], v));
  return m;
}

// Returns grad_x; adds the w_k (times v) into gt, gs. kTail: only the lanes set in `valid`
// count in the sums (the others are padding, or elements a previous vector counted).
template <class Cfg, bool kTail, typename V>
inline V backward_step(V v, V g, const V* s, const V* t, V* gs, V* gt, int K, MaskOf<V> valid) {
  typedef decltype(v[0] + 0) T;
  typedef MaskOf<V> M;
  const V m = max_piece<Cfg>(v, s, t, K);
  const M one = (M)vset(T(1));
  V share;
  if (Cfg::KC == 2) {  // g / n as g * (1/n), exactly: n = 2, 1, or 0 (1/0 = inf: g*inf*0 = NaN)
    const M e0 = piece<Cfg::kIcpt>(s[0], t[0], v) == m;
    const M e1 = piece<Cfg::kIcpt>(s[1], t[1], v) == m;
    const V inf = vset(std::numeric_limits<T>::infinity());
    const V reciprocal = (e0 & e1) ? vset(T(0.5)) : ((e0 | e1) ? vset(T(1)) : inf);
    share = g * reciprocal;
  } else {
    V n = (V)((piece<Cfg::kIcpt>(s[0], t[0], v) == m) & one);
    for (int k = 1; k < Cfg::pieces(K); ++k) {
      n += (V)((piece<Cfg::kIcpt>(s[k], t[k], v) == m) & one);
    }
    share = g / n;
  }
  V gx{};
  for (int k = 0; k < Cfg::pieces(K); ++k) {
    const V w = share * (V)((piece<Cfg::kIcpt>(s[k], t[k], v) == m) & one);
    if (k == 0) {
      gx = w * s[0];
    } else {
      gx += w * s[k];
    }
    if (kTail) {  // select after the product: 0 * v is NaN for an infinite or NaN v
      gs[k] += valid ? w * v : V{};
      gt[k] += valid ? w : V{};
    } else {
      gs[k] += w * v;
      gt[k] += w;
    }
  }
  return gx;
}

// K vectors: registers when K is known at compile time, the heap otherwise.
template <typename V, int KC>
struct PieceVecs {
  V a[KC];
  explicit PieceVecs(int) {}
  V* get() { return a; }
};
template <typename V>
struct PieceVecs<V, 0> {
  std::unique_ptr<V[]> a;
  explicit PieceVecs(int K) : a(new V[K]) {}
  V* get() { return a.get(); }
};

// Lane masks: the last `n` lanes (the new elements of a vector that overlaps its predecessor),
// or the first `n` (a zero-padded vector).
template <typename V>
inline MaskOf<V> last_lanes(int64_t n) {
  constexpr int64_t L = lanes<decltype(V{}[0] + 0)>();
  MaskOf<V> m;
  for (int64_t i = 0; i < L; ++i) m[i] = i >= L - n ? -1 : 0;
  return m;
}
template <typename V>
inline MaskOf<V> first_lanes(int64_t n) {
  constexpr int64_t L = lanes<decltype(V{}[0] + 0)>();
  MaskOf<V> m;
  for (int64_t i = 0; i < L; ++i) m[i] = i < n ? -1 : 0;
  return m;
}

// ---- Contiguous NCHW: one (b, c) plane at a time, coefficients broadcast -----------------------
// s, t: [B*C, K]; gs, gt (backward): [B*C, K]. Planes [begin, end). The last P % L positions
// are done by one more whole vector ending at P (overlapping the one before: its lanes are
// recomputed, identically, and only the new ones count in the sums); a plane shorter than one
// vector goes through a zero-padded buffer.

template <class Cfg>
void forward_planes(const typename Cfg::S* x, typename Cfg::S* y, const typename Cfg::T* s,
                    const typename Cfg::T* t, int64_t P, int K, int64_t begin, int64_t end) {
  typedef Vec<typename Cfg::T> V;
  constexpr int64_t L = lanes<typename Cfg::T>();
  PieceVecs<V, Cfg::KC> sv_(K), tv_(K);
  V *sv = sv_.get(), *tv = tv_.get();
  for (int64_t bc = begin; bc < end; ++bc) {
    for (int k = 0; k < Cfg::pieces(K); ++k) {
      sv[k] = vset(s[bc * K + k]);
      tv[k] = Cfg::kIcpt ? vset(t[bc * K + k]) : V{};
    }
    const typename Cfg::S* xr = x + bc * P;
    typename Cfg::S* yr = y + bc * P;
    int64_t p = 0;
    for (; p + L <= P; p += L) store_lanes(yr + p, max_piece<Cfg>(load_lanes(xr + p), sv, tv, K));
    if (p == P) continue;
    if (P >= L) {
      store_lanes(yr + P - L, max_piece<Cfg>(load_lanes(xr + P - L), sv, tv, K));
    } else {
      store_tail(yr, max_piece<Cfg>(load_tail(xr, P), sv, tv, K), P);
    }
  }
}

template <class Cfg>
void backward_planes(const typename Cfg::S* x, const typename Cfg::S* g, typename Cfg::S* gx,
                     const typename Cfg::T* s, const typename Cfg::T* t, typename Cfg::T* gs,
                     typename Cfg::T* gt, int64_t P, int K, int64_t begin, int64_t end) {
  typedef Vec<typename Cfg::T> V;
  typedef MaskOf<V> M;
  constexpr int64_t L = lanes<typename Cfg::T>();
  PieceVecs<V, Cfg::KC> sv_(K), tv_(K), as_(K), at_(K);
  V *sv = sv_.get(), *tv = tv_.get(), *as = as_.get(), *at = at_.get();
  const M tail = P >= L ? last_lanes<V>(P % L) : first_lanes<V>(P);
  for (int64_t bc = begin; bc < end; ++bc) {
    for (int k = 0; k < Cfg::pieces(K); ++k) {
      sv[k] = vset(s[bc * K + k]);
      tv[k] = Cfg::kIcpt ? vset(t[bc * K + k]) : V{};
      as[k] = V{};
      at[k] = V{};
    }
    const typename Cfg::S* xr = x + bc * P;
    const typename Cfg::S* gr = g + bc * P;
    typename Cfg::S* gxr = gx + bc * P;
    int64_t p = 0;
    for (; p + L <= P; p += L) {
      store_lanes(gxr + p, backward_step<Cfg, false>(load_lanes(xr + p), load_lanes(gr + p), sv,
                                                      tv, as, at, K, M{}));
    }
    if (p < P && P >= L) {
      store_lanes(gxr + P - L, backward_step<Cfg, true>(load_lanes(xr + P - L),
                                                         load_lanes(gr + P - L), sv, tv, as, at,
                                                         K, tail));
    } else if (p < P) {
      store_tail(gxr, backward_step<Cfg, true>(load_tail(xr, P), load_tail(gr, P), sv, tv, as, at,
                                               K, tail), P);
    }
    for (int k = 0; k < Cfg::pieces(K); ++k) {
      gs[bc * K + k] = hsum(as[k]);
      gt[bc * K + k] = hsum(at[k]);
    }
  }
}

// ---- channels_last: rows of C channels, coefficients as per-sample [K, Cpad] tables -----------
// s, t: [B, K, Cpad] with Cpad = max(C, 8) (zero padding), so that coefficient vectors can be
// loaded at any channel c <= C - L, or at 0 when C < L. The last C % L channels of a row: as
// the last positions of a plane above.

// Rows [begin, end) of the B*P rows.
template <class Cfg>
void forward_rows(const typename Cfg::S* x, typename Cfg::S* y, const typename Cfg::T* s,
                  const typename Cfg::T* t, int64_t P, int64_t C, int64_t Cpad, int K,
                  int64_t begin, int64_t end) {
  typedef Vec<typename Cfg::T> V;
  constexpr int64_t L = lanes<typename Cfg::T>();
  PieceVecs<V, Cfg::KC> sv_(K), tv_(K);
  V *sv = sv_.get(), *tv = tv_.get();
  for (int64_t row = begin; row < end;) {  // the rows of one sample at a time
    const int64_t b = row / P, stop = std::min(end, (b + 1) * P);
    const typename Cfg::T* sb = s + b * K * Cpad;
    const typename Cfg::T* tb = t + b * K * Cpad;
    for (; row < stop; ++row) {
      const typename Cfg::S* xr = x + row * C;
      typename Cfg::S* yr = y + row * C;
      int64_t c = 0;
      for (; c + L <= C; c += L) {
        for (int k = 0; k < Cfg::pieces(K); ++k) {
          sv[k] = vload(sb + k * Cpad + c);
          tv[k] = Cfg::kIcpt ? vload(tb + k * Cpad + c) : V{};
        }
        store_lanes(yr + c, max_piece<Cfg>(load_lanes(xr + c), sv, tv, K));
      }
      if (c == C) continue;
      const int64_t at_c = C >= L ? C - L : 0;
      for (int k = 0; k < Cfg::pieces(K); ++k) {
        sv[k] = vload(sb + k * Cpad + at_c);
        tv[k] = Cfg::kIcpt ? vload(tb + k * Cpad + at_c) : V{};
      }
      if (C >= L) {
        store_lanes(yr + at_c, max_piece<Cfg>(load_lanes(xr + at_c), sv, tv, K));
      } else {
        store_tail(yr, max_piece<Cfg>(load_tail(xr, C), sv, tv, K), C);
      }
    }
  }
}

// Rows [r0, r1) of sample b, channels [c0, c1) (c0 a multiple of L, and c1 - c0 >= L unless
// c0 = 0 and c1 = C): the sums over these rows go to part_s/part_t ([K, Cpad] of this task's
// row chunk, in L1). Row by row, in memory order: on maps larger than the caches, any other
// order (a walk down each vector of channels with its sums in registers, or two to four rows
// interleaved) ran 1.5 to 2x slower, as the hardware prefetchers no longer stream the rows.
template <class Cfg>
void backward_rows(const typename Cfg::S* x, const typename Cfg::S* g, typename Cfg::S* gx,
                   const typename Cfg::T* s, const typename Cfg::T* t, typename Cfg::T* part_s,
                   typename Cfg::T* part_t, int64_t P, int64_t C, int64_t Cpad, int K, int64_t b,
                   int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  typedef typename Cfg::T T;
  typedef Vec<T> V;
  typedef MaskOf<V> M;
  constexpr int64_t L = lanes<T>();
  PieceVecs<V, Cfg::KC> sv_(K), tv_(K), as_(K), at_(K);
  V *sv = sv_.get(), *tv = tv_.get(), *as = as_.get(), *at = at_.get();
  const T* sb = s + b * K * Cpad;
  const T* tb = t + b * K * Cpad;
  // Fewer channels than one vector (c0 = 0, c1 = C < L): through zero-padded buffers, the
  // sums as whole vectors at 0 (Cpad >= L leaves room).
  const bool padded = c1 - c0 < L;
  const int64_t width = padded ? L : c1 - c0;
  for (int k = 0; k < Cfg::pieces(K); ++k) {
    std::fill(part_s + k * Cpad + c0, part_s + k * Cpad + c0 + width, T(0));
    std::fill(part_t + k * Cpad + c0, part_t + k * Cpad + c0 + width, T(0));
  }
  // The last C % L channels of a row: one whole vector ending at c1, overlapping the one
  // before; its other lanes are recomputed identically and left out of the sums.
  const int64_t n_last = (c1 - c0) % L;
  const int64_t c_last = padded ? c0 : c1 - L;
  const M valid_last = padded ? first_lanes<V>(c1 - c0) : last_lanes<V>(n_last);
  const int64_t c_full_end = padded ? c0 : c1 - n_last;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t row = (b * P + r) * C;
    int64_t c = c0;
    for (; c < c_full_end; c += L) {
      for (int k = 0; k < Cfg::pieces(K); ++k) {
        sv[k] = vload(sb + k * Cpad + c);
        tv[k] = Cfg::kIcpt ? vload(tb + k * Cpad + c) : V{};
        as[k] = vload(part_s + k * Cpad + c);
        at[k] = vload(part_t + k * Cpad + c);
      }
      store_lanes(gx + row + c, backward_step<Cfg, false>(load_lanes(x + row + c),
                                                           load_lanes(g + row + c), sv, tv, as,
                                                           at, K, M{}));
      for (int k = 0; k < Cfg::pieces(K); ++k) {
        vstore(part_s + k * Cpad + c, as[k]);
        vstore(part_t + k * Cpad + c, at[k]);
      }
    }
    if (c == c1) continue;
    for (int k = 0; k < Cfg::pieces(K); ++k) {
      sv[k] = vload(sb + k * Cpad + c_last);
      tv[k] = Cfg::kIcpt ? vload(tb + k * Cpad + c_last) : V{};
      as[k] = vload(part_s + k * Cpad + c_last);
      at[k] = vload(part_t + k * Cpad + c_last);
    }
    const int64_t o = row + c_last;
    if (padded) {
      store_tail(gx + o, backward_step<Cfg, true>(load_tail(x + o, c1 - c0),
                                                   load_tail(g + o, c1 - c0), sv, tv, as, at, K,
                                                   valid_last), c1 - c0);
    } else {
      store_lanes(gx + o, backward_step<Cfg, true>(load_lanes(x + o), load_lanes(g + o), sv, tv,
                                                    as, at, K, valid_last));
    }
    for (int k = 0; k < Cfg::pieces(K); ++k) {
      vstore(part_s + k * Cpad + c_last, as[k]);
      vstore(part_t + k * Cpad + c_last, at[k]);
    }
  }
}

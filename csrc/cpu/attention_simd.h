// SIMD building blocks of the CPU attention kernels, compiled once per instruction set.
//
// NO include guard and NO includes: a kernel .cpp includes this inside a namespace per
// instruction set, with MF_VEC_BYTES set (16: SSE2/NEON, 32: AVX2), after all library headers
// (see attention_common.h). Vectors are GCC/Clang vector extensions, so the same source is
// 4-wide under the baseline and 8-wide under `#pragma GCC target("avx2,fma")`, where the
// compiler contracts a*b+c into FMAs.
//
// T is the accumulation type (float, or double for fp64 inputs). Every length n handed to
// the vector routines is a multiple of kTileQuantum positions, which is a whole number of
// vectors for every T here, so there are no scalar tail loops.

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(MF_VEC_BYTES)));
  typedef int32_t itype __attribute__((vector_size(MF_VEC_BYTES)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(MF_VEC_BYTES)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t lanes() {
  return MF_VEC_BYTES / sizeof(T);
}

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));  // an unaligned load
  return v;
}
template <typename T>
inline void vstore(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}
template <typename T>
inline Vec<T> vset(T s) {
  return Vec<T>{} + s;
}
// Horizontal sum by folding halves (lo + hi, recursively): a few shuffles and adds on
// registers, where a loop over the lanes makes the compiler spill the vector and add the
// lanes one by one (a long dependency chain, once per dot product per tile).
template <typename T, int Bytes>
struct HSum {
  typedef T V __attribute__((vector_size(Bytes)));
  typedef T H __attribute__((vector_size(Bytes / 2)));
  static inline T run(V v) {
    H lo, hi;
    __builtin_memcpy(&lo, &v, Bytes / 2);
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + Bytes / 2, Bytes / 2);
    return HSum<T, Bytes / 2>::run(lo + hi);
  }
};
template <typename T>
struct HSum<T, 2 * sizeof(T)> {
  typedef T V __attribute__((vector_size(2 * sizeof(T))));
  static inline T run(V v) { return v[0] + v[1]; }
};
// (V is a deduced vector type: Vec<T> itself is not deducible.)
template <typename V>
inline auto hsum(V v) {
  typedef decltype(v[0] + 0) T;
  return HSum<T, sizeof(V)>::run(v);
}
template <typename V>
inline V vmax(V a, V b) {
  return a > b ? a : b;
}

// 2^x for base-2 softmax arguments (x - max <= 0): n = round(x), r = x - n in [-1/2, 1/2], a
// degree-6 fit of 2^r (relative error 1e-7 in fp32 evaluation, about 1 ulp), 2^n built in the
// exponent bits. Clamping x to [-127, 0] keeps n >= -127, and n = -127 builds 2^n = +0.0:
// arguments below -126.5 give exactly 0, -inf included (the padding of partial tiles relies on
// it), without a select. NaN propagates (the clamps keep a NaN operand).
inline Vec<float> vexp2(Vec<float> x) {
  using V = Vec<float>;
  using IV = VecOf<float>::itype;
  const V lo = vset(-127.0f), hi = vset(0.0f), magic = vset(12582912.0f);  // 1.5 * 2^23
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V n = (xc + magic) - magic;  // round to nearest
  const V r = xc - n;
  V p = vset(1.5346160216722637e-4f);
  p = p * r + vset(1.3400075258687139e-3f);
  p = p * r + vset(9.618489071726799e-3f);
  p = p * r + vset(5.550328269600868e-2f);
  p = p * r + vset(0.24022646248340607f);
  p = p * r + vset(0.6931471824645996f);
  p = p * r + vset(1.0f);
  const IV bits = (__builtin_convertvector(n, IV) + 127) << 23;
  return p * (V)bits;  // (V) reinterprets the bits
}
// fp64 is the testing and gradcheck precision: the library exp2 is accurate and fast enough.
inline Vec<double> vexp2(Vec<double> x) {
  for (int64_t i = 0; i < lanes<double>(); ++i) x[i] = std::exp2(x[i]);
  return x;
}

// ---- Row softmax pieces (m2f: softmax over the positions of one token's row) ----

// Four independent chains: one chain of dependent vmax is latency-bound (it showed up as a
// tenth of the forward on a 112x112 map).
template <typename T>
inline T row_max(const T* s, int64_t n) {
  constexpr int64_t L = lanes<T>();
  Vec<T> m0 = vset(-std::numeric_limits<T>::infinity()), m1 = m0, m2 = m0, m3 = m0;
  int64_t t = 0;
  for (; t + 4 * L <= n; t += 4 * L) {
    m0 = vmax(m0, vload(s + t));
    m1 = vmax(m1, vload(s + t + L));
    m2 = vmax(m2, vload(s + t + 2 * L));
    m3 = vmax(m3, vload(s + t + 3 * L));
  }
  for (; t < n; t += L) m0 = vmax(m0, vload(s + t));
  const Vec<T> m = vmax(vmax(m0, m1), vmax(m2, m3));
  T r = m[0];
  for (int64_t i = 1; i < lanes<T>(); ++i) r = std::max(r, m[i]);
  return r;
}

// s = 2^(s - shift) (times mul when kScale) in place; returns the sum of 2^(s - shift).
template <bool kScale, typename T>
inline T exp2_row(T* s, int64_t n, T shift, T mul) {
  const Vec<T> sh = vset(shift), mu = vset(mul);
  Vec<T> acc0{}, acc1{};
  int64_t t = 0;
  for (; t + 2 * lanes<T>() <= n; t += 2 * lanes<T>()) {  // two independent exp chains
    const Vec<T> e0 = vexp2(vload(s + t) - sh), e1 = vexp2(vload(s + t + lanes<T>()) - sh);
    acc0 += e0;
    acc1 += e1;
    vstore(s + t, kScale ? e0 * mu : e0);
    vstore(s + t + lanes<T>(), kScale ? e1 * mu : e1);
  }
  if (t < n) {
    const Vec<T> e0 = vexp2(vload(s + t) - sh);
    acc0 += e0;
    vstore(s + t, kScale ? e0 * mu : e0);
  }
  return hsum(acc0 + acc1);
}

// Softmax backward along a row: d = a * (d - delta), in place in d. Returns sum a * d (the
// incoming d): the row's exact delta, of which the caller's delta is an estimate.
template <typename T>
inline T softmax_backward_row(const T* a, T* d, int64_t n, T delta) {
  const Vec<T> dv = vset(delta);
  Vec<T> dot{};
  for (int64_t t = 0; t < n; t += lanes<T>()) {
    const Vec<T> av = vload(a + t), dd = vload(d + t);
    dot += av * dd;
    vstore(d + t, av * (dd - dv));
  }
  return hsum(dot);
}

// ---- Column softmax pieces (f2m: softmax over the M tokens, for every position) ----

// S[r*lds + t], r < rows: softmax over r for every t, in place (S in base 2).
template <typename T>
inline void col_softmax(T* S, int64_t lds, int64_t rows, int64_t n) {
  for (int64_t t = 0; t < n; t += lanes<T>()) {
    Vec<T> m = vload(S + t);
    for (int64_t r = 1; r < rows; ++r) m = vmax(m, vload(S + r * lds + t));
    Vec<T> sum{};
    for (int64_t r = 0; r < rows; ++r) {
      const Vec<T> e = vexp2(vload(S + r * lds + t) - m);
      sum += e;
      vstore(S + r * lds + t, e);
    }
    const Vec<T> inv = vset(T(1)) / sum;
    for (int64_t r = 0; r < rows; ++r) vstore(S + r * lds + t, vload(S + r * lds + t) * inv);
  }
}

// Softmax backward over columns: D = A * (D - sum_r A*D), in place in D.
template <typename T>
inline void col_softmax_backward(const T* A, T* D, int64_t ld, int64_t rows, int64_t n) {
  for (int64_t t = 0; t < n; t += lanes<T>()) {
    Vec<T> dot{};
    for (int64_t r = 0; r < rows; ++r) dot += vload(A + r * ld + t) * vload(D + r * ld + t);
    for (int64_t r = 0; r < rows; ++r) {
      vstore(D + r * ld + t, vload(A + r * ld + t) * (vload(D + r * ld + t) - dot));
    }
  }
}

// ---- The three small matrix products everything is made of ----

// S[r][t] = sum_k W[r][k] * X[k][t] for a block of R rows and NV vectors of positions: the
// rows of W broadcast, R*NV accumulators in registers.
template <int R, int NV, typename T>
inline void rows_times_tile_step(const T* W, int64_t ldw, const T* X, int64_t ldx, int64_t K,
                                 T* S, int64_t lds) {
  constexpr int64_t L = lanes<T>();
  Vec<T> a[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) a[r][v] = Vec<T>{};
  for (int64_t k = 0; k < K; ++k, X += ldx) {
    Vec<T> x[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) x[v] = vload(X + v * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const Vec<T> w = vset(W[r * ldw + k]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) a[r][v] += w * x[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) vstore(S + r * lds + v * L, a[r][v]);
}

// Two vectors of positions per step (enough independent FMAs to hide their latency), one
// for an odd last vector.
template <int R, typename T>
inline void rows_times_tile_block(const T* W, int64_t ldw, const T* X, int64_t ldx, int64_t K,
                                  T* S, int64_t lds, int64_t n) {
  constexpr int64_t L = lanes<T>();
  int64_t t = 0;
  for (; t + 2 * L <= n; t += 2 * L) rows_times_tile_step<R, 2>(W, ldw, X + t, ldx, K, S + t, lds);
  if (t < n) rows_times_tile_step<R, 1>(W, ldw, X + t, ldx, K, S + t, lds);
}

// S[rows, n] = W[rows, K] @ X[K, n] (row strides ldw, ldx, lds).
template <typename T>
void rows_times_tile(const T* W, int64_t ldw, const T* X, int64_t ldx, int64_t K, T* S,
                     int64_t lds, int64_t rows, int64_t n) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) {
    rows_times_tile_block<6>(W + r * ldw, ldw, X, ldx, K, S + r * lds, lds, n);
  }
  W += r * ldw;
  S += r * lds;
  switch (rows - r) {
    case 5: rows_times_tile_block<5>(W, ldw, X, ldx, K, S, lds, n); break;
    case 4: rows_times_tile_block<4>(W, ldw, X, ldx, K, S, lds, n); break;
    case 3: rows_times_tile_block<3>(W, ldw, X, ldx, K, S, lds, n); break;
    case 2: rows_times_tile_block<2>(W, ldw, X, ldx, K, S, lds, n); break;
    case 1: rows_times_tile_block<1>(W, ldw, X, ldx, K, S, lds, n); break;
    default: break;
  }
}

// Acc[r][k] += sum_t Z[r][t] * X[k][t] for R rows of Z and KB rows of X: R*KB dot products
// along t kept as vectors, summed horizontally once per tile.
template <int R, int KB, typename T>
inline void tile_dots_block(const T* Z, int64_t ldz, const T* X, int64_t ldx, T* Acc, int64_t lda,
                            int64_t n) {
  Vec<T> a[R][KB];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < KB; ++k) a[r][k] = Vec<T>{};
  for (int64_t t = 0; t < n; t += lanes<T>()) {
    Vec<T> x[KB];
#pragma GCC unroll 4
    for (int k = 0; k < KB; ++k) x[k] = vload(X + k * ldx + t);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const Vec<T> z = vload(Z + r * ldz + t);
#pragma GCC unroll 4
      for (int k = 0; k < KB; ++k) a[r][k] += z * x[k];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < KB; ++k) Acc[r * lda + k] += hsum(a[r][k]);
}

template <int R, typename T>
inline void tile_dots_rows(const T* Z, int64_t ldz, const T* X, int64_t ldx, int64_t K, T* Acc,
                           int64_t lda, int64_t n) {
  int64_t k = 0;
  for (; k + 3 <= K; k += 3) tile_dots_block<R, 3>(Z, ldz, X + k * ldx, ldx, Acc + k, lda, n);
  if (K - k == 2) tile_dots_block<R, 2>(Z, ldz, X + k * ldx, ldx, Acc + k, lda, n);
  if (K - k == 1) tile_dots_block<R, 1>(Z, ldz, X + k * ldx, ldx, Acc + k, lda, n);
}

// Acc[rows, K] += Z[rows, n] @ X[K, n]^T.
template <typename T>
void tile_dots(const T* Z, int64_t ldz, const T* X, int64_t ldx, int64_t K, T* Acc, int64_t lda,
               int64_t rows, int64_t n) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    tile_dots_rows<4>(Z + r * ldz, ldz, X, ldx, K, Acc + r * lda, lda, n);
  }
  Z += r * ldz;
  Acc += r * lda;
  switch (rows - r) {
    case 3: tile_dots_rows<3>(Z, ldz, X, ldx, K, Acc, lda, n); break;
    case 2: tile_dots_rows<2>(Z, ldz, X, ldx, K, Acc, lda, n); break;
    case 1: tile_dots_rows<1>(Z, ldz, X, ldx, K, Acc, lda, n); break;
    default: break;
  }
}

// Y[k][t] = I[k][t] + sum_r W[r][k] * Z[r][t] for KB rows of Y and NV vectors of positions
// (I may be null: zero).
template <int KB, int NV, typename T>
inline void expand_step(const T* W, int64_t ldw, const T* Z, int64_t ldz, int64_t rows,
                        const T* I, int64_t ldi, T* Y, int64_t ldy) {
  constexpr int64_t L = lanes<T>();
  Vec<T> a[KB][NV];
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) a[k][v] = I ? vload(I + k * ldi + v * L) : Vec<T>{};
  for (int64_t r = 0; r < rows; ++r, Z += ldz) {
    Vec<T> z[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) z[v] = vload(Z + v * L);
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) {
      const Vec<T> w = vset(W[r * ldw + k]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) a[k][v] += w * z[v];
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) vstore(Y + k * ldy + v * L, a[k][v]);
}

template <int KB, typename T>
inline void expand_block(const T* W, int64_t ldw, const T* Z, int64_t ldz, int64_t rows,
                         const T* I, int64_t ldi, T* Y, int64_t ldy, int64_t n) {
  constexpr int64_t L = lanes<T>();
  int64_t t = 0;
  for (; t + 2 * L <= n; t += 2 * L) {
    expand_step<KB, 2>(W, ldw, Z + t, ldz, rows, I ? I + t : I, ldi, Y + t, ldy);
  }
  if (t < n) expand_step<KB, 1>(W, ldw, Z + t, ldz, rows, I ? I + t : I, ldi, Y + t, ldy);
}

// Y[K, n] = I[K, n] + W[rows, K]^T @ Z[rows, n] (I may be null).
template <typename T>
void expand(const T* W, int64_t ldw, const T* Z, int64_t ldz, int64_t rows, const T* I,
            int64_t ldi, T* Y, int64_t ldy, int64_t K, int64_t n) {
  int64_t k = 0;
  for (; k + 6 <= K; k += 6) {
    expand_block<6>(W + k, ldw, Z, ldz, rows, I ? I + k * ldi : I, ldi, Y + k * ldy, ldy, n);
  }
  W += k;
  Y += k * ldy;
  if (I) I += k * ldi;
  switch (K - k) {
    case 5: expand_block<5>(W, ldw, Z, ldz, rows, I, ldi, Y, ldy, n); break;
    case 4: expand_block<4>(W, ldw, Z, ldz, rows, I, ldi, Y, ldy, n); break;
    case 3: expand_block<3>(W, ldw, Z, ldz, rows, I, ldi, Y, ldy, n); break;
    case 2: expand_block<2>(W, ldw, Z, ldz, rows, I, ldi, Y, ldy, n); break;
    case 1: expand_block<1>(W, ldw, Z, ldz, rows, I, ldi, Y, ldy, n); break;
    default: break;
  }
}

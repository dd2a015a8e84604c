// Vector helpers of the frozen CPU kernels, compiled once per instruction set.
//
// NO include guard and NO includes: a kernels_<isa>.cpp includes this inside its own
// namespace, with MF_VEC_BYTES set (16, 32 or 64), after every library header (see
// kernels_isa.h). It builds on the attention kernels' helpers (Vec, vload, vstore, hsum,
// vexp2: GCC/Clang vector extensions, the same source at every width) and adds loads and
// stores of the first n < L lanes, for the channel tails: a map with 20 channels is one full
// AVX-512 vector and a 4-lane tail, which must neither write nor need memory past column 20.
#include "../attention_simd.h"

using V = Vec<float>;
constexpr int64_t L = lanes<float>();

#if MF_VEC_BYTES == 64 && defined(__x86_64__)
inline __mmask16 lane_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline V load_first(const float* p, int64_t n) {
  return (V)_mm512_maskz_loadu_ps(lane_mask(n), p);
}
inline void store_first(float* p, V v, int64_t n) {
  _mm512_mask_storeu_ps(p, lane_mask(n), (__m512)v);
}
#elif MF_VEC_BYTES == 32 && defined(__x86_64__)
inline __m256i lane_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline V load_first(const float* p, int64_t n) { return (V)_mm256_maskload_ps(p, lane_mask(n)); }
inline void store_first(float* p, V v, int64_t n) {
  _mm256_maskstore_ps(p, lane_mask(n), (__m256)v);
}
#else
inline V load_first(const float* p, int64_t n) {
  V v{};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}
inline void store_first(float* p, V v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = v[i];
}
#endif

// n lanes from p: a plain load when n == L.
inline V load_n(const float* p, int64_t n) { return n == L ? vload(p) : load_first(p, n); }
inline void store_n(float* p, V v, int64_t n) {
  if (n == L) {
    vstore(p, v);
  } else {
    store_first(p, v, n);
  }
}

// Horizontal max by folding halves (as hsum does for sums): a few shuffles on registers.
template <int Bytes>
struct HMax {
  typedef float W __attribute__((vector_size(Bytes)));
  typedef float H __attribute__((vector_size(Bytes / 2)));
  static inline float run(W v) {
    H lo, hi;
    __builtin_memcpy(&lo, &v, Bytes / 2);
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + Bytes / 2, Bytes / 2);
    return HMax<Bytes / 2>::run(lo > hi ? lo : hi);
  }
};
template <>
struct HMax<8> {
  typedef float W __attribute__((vector_size(8)));
  static inline float run(W v) { return v[0] > v[1] ? v[0] : v[1]; }
};
inline float hmax(V v) { return HMax<MF_VEC_BYTES>::run(v); }

// Element-wise kernels of the frozen CPU path, compiled once per instruction set. NO include
// guard: included by kernels_isa.h after simd.h.

// erf(x) for x >= 0 by Abramowitz & Stegun 7.1.26: 1 - t (a1 + t (a2 + ... + t a5)) e^(-x^2),
// t = 1 / (1 + p x); absolute error below 1.5e-7, about one fp32 ulp of values near 1.
inline V erf_nonnegative(V x) {
  const V t = vset(1.0f) / (vset(1.0f) + x * 0.3275911f);
  V poly = vset(1.061405429f);
  poly = poly * t + vset(-1.453152027f);
  poly = poly * t + vset(1.421413741f);
  poly = poly * t + vset(-0.284496736f);
  poly = poly * t + vset(0.254829592f);
  // e^(-x^2) = 2^(-x^2 log2 e); vexp2 flushes arguments below -127 to 0.
  return vset(1.0f) - poly * t * vexp2(x * x * -1.4426950408889634f);
}

// x = x/2 (1 + erf(x / sqrt 2)): GELU, exact form (nn.GELU's default), in place.
void gelu(float* x, int64_t n) {
  const V zero{};
  for (int64_t i = 0; i < n; i += L) {
    const int64_t m = std::min(L, n - i);
    const V v = load_n(x + i, m);
    const V u = v * 0.70710678118654752f;
    const V au = u < zero ? -u : u;
    const V e = erf_nonnegative(au);
    const V erf = u < zero ? -e : e;
    store_n(x + i, v * 0.5f * (vset(1.0f) + erf), m);
  }
}

// The two cross-attentions of one image, NHWC fp32, for the frozen CPU path (see Attention in
// kernels.h), compiled once per instruction set. NO include guard: included by kernels_isa.h
// after gemm_kernels.h.
//
// With x as the [P, C] matrix of a feature map and few tokens (M = 3 to 6; 100 for a
// detection head), each head is three small GEMMs through gemm() and a softmax:
//
//   m2f:  S = x_h q_h^T  [P, M];  A = softmax over p (each column);  out_h^T = x_h^T A
//   f2m:  S = x_h k_h^T  [P, M];  A = softmax over m (each row);     y_h = x_h + A v_h
//
// Scores are scaled by s * log2(e) inside the softmax so that only exp2 is needed (as in the
// attention ops). x_h^T as the A operand of a GEMM is just x read with row stride 1 and k
// stride C, so no transpose is ever materialised. The token operands (q_h^T, k_h^T, v_h: a
// few KB) are packed into weight panels per call.
//
// Scratch layout (attention_scratch_floats): S [P, ldS] with ldS = M rounded up to whole
// vectors (lanes beyond M are never stored to memory that matters), then the packed token
// operand, then out_h^T for m2f.

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// dst[k, n] = src[n * lds + k] for k < depth, n < count: the transposed, panel-packed copy of
// `count` rows of `depth` values (zero padded to whole panels).
inline void pack_transposed(const float* src, int64_t lds, int64_t count, int64_t depth,
                            float* dst) {
  const int64_t panels = (count + kPanel - 1) / kPanel;
  std::fill(dst, dst + panels * depth * kPanel, 0.0f);
  for (int64_t n = 0; n < count; ++n) {
    float* col = dst + (n / kPanel) * depth * kPanel + n % kPanel;
    for (int64_t k = 0; k < depth; ++k) col[k * kPanel] = src[n * lds + k];
  }
}

// dst = the panel-packed copy of the [depth, count] block at src (row stride lds).
inline void pack_rows(const float* src, int64_t lds, int64_t depth, int64_t count, float* dst) {
  const int64_t panels = (count + kPanel - 1) / kPanel;
  std::fill(dst, dst + panels * depth * kPanel, 0.0f);
  for (int64_t k = 0; k < depth; ++k) {
    for (int64_t n = 0; n < count; ++n) {
      dst[(n / kPanel) * depth * kPanel + k * kPanel + n % kPanel] = src[k * lds + n];
    }
  }
}

// row[0, M) = softmax(scale * row[0, M)) in base 2; the row is readable up to ldS.
inline void softmax_row(float* row, int64_t M, int64_t ldS, float scale) {
  V lane;
  for (int64_t i = 0; i < L; ++i) lane[i] = static_cast<float>(i);
  const V minus_inf = vset(-std::numeric_limits<float>::infinity());
  V mxv = minus_inf;
  for (int64_t j = 0; j < ldS; j += L) {
    const V s = vload(row + j);
    mxv = vmax(mxv, lane < vset(static_cast<float>(M - j)) ? s : minus_inf);
  }
  const V mx = vset(hmax(mxv) * scale);
  V sum{};
  for (int64_t j = 0; j < ldS; j += L) {
    const V s = vload(row + j) * scale - mx;
    const V e = vexp2(lane < vset(static_cast<float>(M - j)) ? s : minus_inf);
    sum += e;
    vstore(row + j, e);
  }
  const V inv = vset(1.0f / hsum(sum));
  for (int64_t j = 0; j < ldS; j += L) vstore(row + j, vload(row + j) * inv);
}

// S [P, ldS] = x_h t_h^T: the scores of every position against every token (a.q) for the
// head's channels [hc, hc + ch), unscaled.
inline void head_scores(const Attention& a, int64_t hc, int64_t ch, float* packed, float* S,
                        int64_t ldS) {
  pack_transposed(a.q + hc, a.ldt, a.tokens, ch, packed);
  Gemm g;
  g.a = a.x + hc;
  g.a_row_stride = a.ldx;
  g.b = packed;
  g.b_panel_stride = ch * kPanel;
  g.c = S;
  g.ldc = ldS;
  g.rows = a.positions;
  g.depth = ch;
  g.cols = a.tokens;
  gemm(g, 0, a.positions);
}

void m2f_attention(const Attention& a) {
  const int64_t P = a.positions, M = a.tokens, C = a.channels, ch = C / a.heads;
  const int64_t ldS = round_up(M, L);
  const float scale = static_cast<float>(1.4426950408889634 / std::sqrt(double(ch)));
  float* S = a.scratch;
  float* packed = S + P * ldS;
  float* outT = packed + round_up(M, kPanel) * ch;
  std::vector<float> colsum(ldS);
  for (int64_t h = 0; h < a.heads; ++h) {
    const int64_t hc = h * ch;
    head_scores(a, hc, ch, packed, S, ldS);
    // Softmax over p, one column per token: the column maxima, then 2^(s S - max) and sums.
    for (int64_t j = 0; j < ldS; j += L) {
      V mx = vset(-std::numeric_limits<float>::infinity());
      for (int64_t p = 0; p < P; ++p) mx = vmax(mx, vload(S + p * ldS + j));
      mx *= scale;
      V sum{};
      for (int64_t p = 0; p < P; ++p) {
        const V e = vexp2(vload(S + p * ldS + j) * scale - mx);
        sum += e;
        vstore(S + p * ldS + j, e);
      }
      vstore(colsum.data() + j, sum);
    }
    // out_h^T [ch, M] = x_h^T A: A operand x_h^T (row stride 1, k stride ldx), B = S.
    Gemm o;
    o.a = a.x + hc;
    o.a_row_stride = 1;
    o.a_k_stride = a.ldx;
    o.b = S;
    o.b_panel_stride = kPanel;  // S is row-major; its columns past kPanel continue the row
    o.ldb = ldS;
    o.c = outT;
    o.ldc = ldS;
    o.rows = ch;
    o.depth = P;
    o.cols = M;
    gemm(o, 0, ch);
    for (int64_t m = 0; m < M; ++m) {
      const float inv = 1.0f / colsum[m];
      for (int64_t c = 0; c < ch; ++c) a.out[m * C + hc + c] = outT[c * ldS + m] * inv;
    }
  }
}

void f2m_attention(const Attention& a) {
  const int64_t P = a.positions, M = a.tokens, C = a.channels, ch = C / a.heads;
  const int64_t ldS = round_up(M, L);
  const float scale = static_cast<float>(1.4426950408889634 / std::sqrt(double(ch)));
  float* S = a.scratch;
  float* packed = S + P * ldS;
  for (int64_t h = 0; h < a.heads; ++h) {
    const int64_t hc = h * ch;
    head_scores(a, hc, ch, packed, S, ldS);
    // Softmax over the M tokens of each position's row (lanes past M masked out).
    for (int64_t p = 0; p < P; ++p) softmax_row(S + p * ldS, M, ldS, scale);
    // y_h = x_h + A v_h
    pack_rows(a.v + hc, a.ldt, M, ch, packed);
    Gemm u;
    u.a = S;
    u.a_row_stride = ldS;
    u.b = packed;
    u.b_panel_stride = M * kPanel;
    u.c = a.out + hc;
    u.ldc = a.ldx;
    u.rows = P;
    u.depth = M;
    u.cols = ch;
    u.epilogue.residual = a.x + hc;
    u.epilogue.ld_residual = a.ldx;
    gemm(u, 0, P);
  }
}

// Inner kernels of m2f_attention, compiled once per instruction set (no include guard, no
// includes: see attention_common.h). They work on one task at a time, a task being one
// (batch b, head h, chunk of position tiles); per tile of positions, with X the [ch, tile]
// slice of x and Q the head's [M, ch] queries pre-scaled by s (by s log2(e) where they make
// scores: the softmaxes run in base 2, see Problem::logit_scale):
//
//   forward:  S = Q X; online softmax over the positions (running max mx and sum l per
//             token, rescaling the running output when the max grows); acc += 2^(S - mx) X^T
//   backward: [S; dA] = [Q; dO] X; A = 2^(S - lse2) with the forward's log-sum-exp lse2 of
//             the row (in base 2);
//             dS = A (dA - delta); dQ += dS X^T; dX = [dO; Q]^T [A; dS]  (= dO^T A + s Q^T dS)
//             with delta = sum_c dO O from the forward output, and D += sum_p A dA, the
//             row's exact delta (see m2f_attention.cpp: it corrects dQ)
//
// so x is read once per pass and nothing of size M x P is ever stored.

// Size of the per-task forward state: mx[M], l[M], acc[M, ch].
inline int64_t m2f_state_size(const attention::Problem& n) { return n.M * (n.ch + 2); }

// Forward of tasks [begin, end); task i writes its state at state + i * m2f_state_size(n).
template <typename S>
void m2f_forward_tasks(const attention::Problem& n, const S* x, const S* q,
                       at::opmath_type<S>* state, int64_t begin, int64_t end) {
  using T = at::opmath_type<S>;
  const int64_t M = n.M, ch = n.ch;
  const auto buffer = attention::scratch<T>(M * ch + ch * n.tile + M * n.tile);
  T* qs = buffer.get();
  T* xbuf = qs + M * ch;
  T* s = xbuf + ch * n.tile;
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / n.nchunks, chunk = task % n.nchunks;
    const int64_t b = bh / n.heads, h = bh % n.heads;
    const S* xb = x + b * n.sB + h * ch * n.sC;
    gather_tokens(q, n, b, h, static_cast<T>(n.logit_scale), qs);
    T* mx = state + task * m2f_state_size(n);
    T* l = mx + M;
    T* acc = l + M;
    std::fill(mx, mx + M, -inf);
    std::fill(l, l + M + M * ch, T(0));
    for (int64_t i = n.chunk_begin(chunk); i < n.chunk_begin(chunk + 1); ++i) {
      const int64_t p0 = i * n.tile, len = std::min(n.tile, n.P - p0), padded = padded_length(len);
      int64_t ldx;
      const T* X = load_tile(xb + p0 * n.sP, n.sC, n.sP, ch, len, padded, xbuf, &ldx);
      rows_times_tile(qs, ch, X, ldx, ch, s, padded, M, padded);
      for (int64_t m = 0; m < M; ++m) {
        T* row = s + m * padded;
        std::fill(row + len, row + padded, -inf);  // padding: 2^-inf = 0
        const T new_max = std::max(mx[m], row_max(row, padded));
        // 2^-inf = 0 on the first tile; a max that does not grow leaves alpha = 1.
        const T alpha = std::exp2(mx[m] - new_max);
        const T sum = exp2_row<false>(row, padded, new_max, T(1));
        l[m] = l[m] * alpha + sum;
        if (alpha != T(1)) {
          for (int64_t c = 0; c < ch; ++c) acc[m * ch + c] *= alpha;
        }
        mx[m] = new_max;
      }
      tile_dots(s, padded, X, ldx, ch, acc, ch, M, padded);
    }
  }
}

// Backward of tasks [begin, end). lse2 holds, per (b, head), the M rows' log2-sum-exp;
// task i accumulates its unscaled dQ partial sum in dq + i * M * ch and its partial sums
// D = sum_p A dA (one per row) in dsum + i * M, and writes its positions of grad_x.
template <typename S>
void m2f_backward_tasks(const attention::Problem& n, const S* x, const S* q, const S* gout,
                        const S* out, const at::opmath_type<S>* lse2, S* gx,
                        at::opmath_type<S>* dq, at::opmath_type<S>* dsum, int64_t begin,
                        int64_t end) {
  using T = at::opmath_type<S>;
  const int64_t M = n.M, ch = n.ch;
  const auto buffer = attention::scratch<T>(4 * M * ch + M + 2 * ch * n.tile + 2 * M * n.tile);
  T* w = buffer.get();      // [Q; dO]: the rows that meet X
  T* w2 = w + 2 * M * ch;    // [dO; Q]: the rows that meet [A; dS]
  T* delta = w2 + 2 * M * ch;
  T* xbuf = delta + M;
  T* ybuf = xbuf + ch * n.tile;
  T* z = ybuf + ch * n.tile;  // [S -> A; dA -> dS], [2M, tile]
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / n.nchunks, chunk = task % n.nchunks;
    const int64_t b = bh / n.heads, h = bh % n.heads;
    const S* xb = x + b * n.sB + h * ch * n.sC;
    S* gxb = gx + b * n.sB + h * ch * n.sC;
    gather_tokens(q, n, b, h, static_cast<T>(n.logit_scale), w);
    gather_tokens(gout, n, b, h, T(1), w + M * ch);
    std::copy(w + M * ch, w + 2 * M * ch, w2);
    gather_tokens(q, n, b, h, static_cast<T>(n.scale), w2 + M * ch);
    // delta[m] = sum_c dO[m, c] O[m, c]: the row sums of A * dA, from the forward output.
    for (int64_t m = 0; m < M; ++m) {
      const S* o = out + (b * M + m) * n.C + h * ch;
      T d = 0;
      for (int64_t c = 0; c < ch; ++c) d += w[(M + m) * ch + c] * static_cast<T>(o[c]);
      delta[m] = d;
    }
    const T* row_lse = lse2 + bh * M;
    T* dqt = dq + task * M * ch;
    std::fill(dqt, dqt + M * ch, T(0));
    T* dst = dsum + task * M;
    std::fill(dst, dst + M, T(0));
    for (int64_t i = n.chunk_begin(chunk); i < n.chunk_begin(chunk + 1); ++i) {
      const int64_t p0 = i * n.tile, len = std::min(n.tile, n.P - p0), padded = padded_length(len);
      int64_t ldx, ldy;
      const T* X = load_tile(xb + p0 * n.sP, n.sC, n.sP, ch, len, padded, xbuf, &ldx);
      rows_times_tile(w, ch, X, ldx, ch, z, padded, 2 * M, padded);
      for (int64_t m = 0; m < M; ++m) {
        T* a = z + m * padded;
        std::fill(a + len, a + padded, -inf);  // padding: A = 0, hence dS = 0
        exp2_row<false>(a, padded, row_lse[m], T(1));
        dst[m] += softmax_backward_row(a, z + (M + m) * padded, padded, delta[m]);
      }
      tile_dots(z + M * padded, padded, X, ldx, ch, dqt, ch, M, padded);
      S* gxt = gxb + p0 * n.sP;
      T* Y = tile_target(gxt, n.sC, n.sP, len, padded, ybuf, &ldy);
      expand(w2, ch, z, padded, 2 * M, static_cast<const T*>(nullptr), 0, Y, ldy, ch, padded);
      store_tile(Y, ldy, gxt, n.sC, n.sP, ch, len);
    }
  }
}

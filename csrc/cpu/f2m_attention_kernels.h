// Inner kernels of f2m_attention, compiled once per instruction set (no include guard, no
// includes: see attention_common.h). A task is one (batch b, head h, chunk of position
// tiles); per tile, with X the [ch, tile] slice of x, dY that of grad_y, K the head's keys
// pre-scaled by s (by s log2(e), as K2, where they make scores: the softmax runs in base 2,
// see Problem::logit_scale) and V its values (both [M, ch]):
//
//   forward:  A = softmax over the M rows of (K2 X);  Y = X + V^T A
//   backward: A as above;  dA = V dY;  dS = A (dA - sum_m A dA)  (column by column)
//             grad_x = dY + K^T dS;  grad_k += dS X^T (times s at the end);  grad_v += A dY^T
//
// The softmax runs over the M tokens of each position, so it is vectorised across positions
// and every position's M probabilities live only in the [M, tile] scratch buffer.

template <typename S>
void f2m_forward_tasks(const attention::Problem& n, const S* x, const S* k, const S* v, S* y,
                       int64_t begin, int64_t end) {
  using T = at::opmath_type<S>;
  const int64_t M = n.M, ch = n.ch;
  const auto buffer = attention::scratch<T>(2 * M * ch + 2 * ch * n.tile + M * n.tile);
  T* ks = buffer.get();
  T* vs = ks + M * ch;
  T* xbuf = vs + M * ch;
  T* ybuf = xbuf + ch * n.tile;
  T* a = ybuf + ch * n.tile;
  int64_t loaded = -1;  // the (b, head) whose keys and values are in ks, vs
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / n.nchunks, chunk = task % n.nchunks;
    const int64_t b = bh / n.heads, h = bh % n.heads;
    if (bh != loaded) {
      gather_tokens(k, n, b, h, static_cast<T>(n.logit_scale), ks);
      gather_tokens(v, n, b, h, T(1), vs);
      loaded = bh;
    }
    const int64_t offset = b * n.sB + h * ch * n.sC;
    for (int64_t i = n.chunk_begin(chunk); i < n.chunk_begin(chunk + 1); ++i) {
      const int64_t p0 = i * n.tile, len = std::min(n.tile, n.P - p0), padded = padded_length(len);
      int64_t ldx, ldy;
      const T* X = load_tile(x + offset + p0 * n.sP, n.sC, n.sP, ch, len, padded, xbuf, &ldx);
      rows_times_tile(ks, ch, X, ldx, ch, a, padded, M, padded);
      col_softmax(a, padded, M, padded);
      S* yt = y + offset + p0 * n.sP;
      T* Y = tile_target(yt, n.sC, n.sP, len, padded, ybuf, &ldy);
      expand(vs, ch, a, padded, M, X, ldx, Y, ldy, ch, padded);
      store_tile(Y, ldy, yt, n.sC, n.sP, ch, len);
    }
  }
}

// Backward of tasks [begin, end): writes grad_x, and task i's partial sums of grad_k / s and
// grad_v at dk + i * M * ch, dv + i * M * ch.
template <typename S>
void f2m_backward_tasks(const attention::Problem& n, const S* gy, const S* x, const S* k,
                        const S* v, S* gx, at::opmath_type<S>* dk, at::opmath_type<S>* dv,
                        int64_t begin, int64_t end) {
  using T = at::opmath_type<S>;
  const int64_t M = n.M, ch = n.ch;
  const auto buffer = attention::scratch<T>(3 * M * ch + 3 * ch * n.tile + 2 * M * n.tile);
  T* ks = buffer.get();   // s k, for grad_x
  T* ks2 = ks + M * ch;    // s log2(e) k, for the scores
  T* vs = ks2 + M * ch;
  T* xbuf = vs + M * ch;
  T* gbuf = xbuf + ch * n.tile;
  T* ybuf = gbuf + ch * n.tile;
  T* a = ybuf + ch * n.tile;  // A, [M, tile]
  T* d = a + M * n.tile;      // dA, then dS
  for (int64_t task = begin; task < end; ++task) {
    const int64_t bh = task / n.nchunks, chunk = task % n.nchunks;
    const int64_t b = bh / n.heads, h = bh % n.heads;
    gather_tokens(k, n, b, h, static_cast<T>(n.scale), ks);
    gather_tokens(k, n, b, h, static_cast<T>(n.logit_scale), ks2);
    gather_tokens(v, n, b, h, T(1), vs);
    T* dkt = dk + task * M * ch;
    T* dvt = dv + task * M * ch;
    std::fill(dkt, dkt + M * ch, T(0));
    std::fill(dvt, dvt + M * ch, T(0));
    const int64_t offset = b * n.sB + h * ch * n.sC;
    for (int64_t i = n.chunk_begin(chunk); i < n.chunk_begin(chunk + 1); ++i) {
      const int64_t p0 = i * n.tile, len = std::min(n.tile, n.P - p0), padded = padded_length(len);
      const int64_t at = offset + p0 * n.sP;
      int64_t ldx, ldg, ldy;
      // Padded columns: X = dY = 0 there, so dA = dS = 0 and nothing reaches grad_k, grad_v.
      const T* X = load_tile(x + at, n.sC, n.sP, ch, len, padded, xbuf, &ldx);
      const T* G = load_tile(gy + at, n.sC, n.sP, ch, len, padded, gbuf, &ldg);
      rows_times_tile(ks2, ch, X, ldx, ch, a, padded, M, padded);
      col_softmax(a, padded, M, padded);
      rows_times_tile(vs, ch, G, ldg, ch, d, padded, M, padded);
      col_softmax_backward(a, d, padded, M, padded);
      T* Y = tile_target(gx + at, n.sC, n.sP, len, padded, ybuf, &ldy);
      expand(ks, ch, d, padded, M, G, ldg, Y, ldy, ch, padded);
      store_tile(Y, ldy, gx + at, n.sC, n.sP, ch, len);
      tile_dots(d, padded, X, ldx, ch, dkt, ch, M, padded);
      tile_dots(a, padded, G, ldg, ch, dvt, ch, M, padded);
    }
  }
}

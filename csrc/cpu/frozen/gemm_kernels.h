// The GEMM of the frozen CPU path (see Gemm in kernels.h), compiled once per instruction set.
//
// NO include guard: included by kernels_isa.h inside a per-instruction-set namespace, after
// simd.h.
//
//   C[r, n] = epilogue( sum_k A[r, k] B[k, n] )
//
// Register blocking as in BLIS/XNNPACK: a micro-kernel keeps an MR x (NV vectors) tile of C
// in registers and walks k, loading NV vectors of a B row and multiplying them by MR scalars
// of A (`vector * scalar`, which compilers emit as a broadcast operand of the FMA). With
// MR = 6, NV = 2 that is 12 independent accumulators: enough to hide the FMA latency, and
// 12 + 2 + 1 registers fit even SSE2's 16. Each micro-tile is stored through the epilogue
// (bias, activation, residual, shuffle) straight from the registers.
//
// Loop order: a block of kRowBlock rows of A (it stays in L2) against every column tile of B;
// a packed weight panel is at most a few hundred KB and is read from L2 for each block.

constexpr int kMR = 6;
constexpr int64_t kRowBlock = 96;
// Columns of one micro-tile: two vectors; they always divide kPanel.
constexpr int64_t kTileCols = 2 * L;
static_assert(kPanel % kTileCols == 0, "a micro-tile must not straddle two weight panels");

template <int NV>
inline void epilogue_vectors(const Epilogue& e, V (&acc)[NV], int64_t row, int64_t col,
                             float* crow, int64_t ncols) {
  const V zero{}, six = vset(6.0f);
#pragma GCC unroll 2
  for (int v = 0; v < NV; ++v) {
    const int64_t c = col + v * L;
    const int64_t n = std::min<int64_t>(L, ncols - v * L);
    if (n <= 0) break;
    V y = acc[v];
    if (e.bias) y += load_n(e.bias + c, n);
    if (e.act == Activation::kRelu6) {
      y = y < zero ? zero : y;
      y = y > six ? six : y;
    } else if (e.act == Activation::kDynamicRelu) {
      const V a = y * load_n(e.slope1 + c, n), b = y * load_n(e.slope2 + c, n);
      y = a > b ? a : b;
    }
    if (e.residual) y += load_n(e.residual + row * e.ld_residual + c, n);
    store_n(crow + c, y, n);
  }
}

// The same, one value at a time, for a column map (MF-26M's channel shuffles): the store
// position c' = map[c] is scattered, the residual read at c'.
template <int NV>
inline void epilogue_mapped(const Epilogue& e, V (&acc)[NV], int64_t row, int64_t col,
                            float* crow, int64_t ncols) {
  for (int64_t j = 0; j < ncols; ++j) {
    const int64_t c = col + j;
    float y = acc[j / L][j % L];
    if (e.bias) y += e.bias[c];
    if (e.act == Activation::kRelu6) {
      y = std::min(std::max(y, 0.0f), 6.0f);
    } else if (e.act == Activation::kDynamicRelu) {
      y = std::max(e.slope1[c] * y, e.slope2[c] * y);
    }
    const int64_t to = e.column_map[c];
    if (e.residual) y += e.residual[row * e.ld_residual + to];
    crow[to] = y;
  }
}

// One MR x NV-vector tile: rows [row, row + MR), columns [col, col + ncols), ncols <= NV*L.
// kUnitK: A's k stride is 1 (the common case: rows of a feature map or of the tokens).
template <int MR, int NV, bool kUnitK>
inline void micro_tile(const Gemm& g, const float* b, int64_t row, int64_t col, int64_t ncols) {
  V acc[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  const float* a = g.a + row * g.a_row_stride;
  const int64_t rs = g.a_row_stride, ks = kUnitK ? 1 : g.a_k_stride;
  for (int64_t k = 0; k < g.depth; ++k, a += ks, b += g.ldb) {
    V bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = vload(b + v * L);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const float s = a[r * rs];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] += bv[v] * s;
    }
  }
  const Epilogue& e = g.epilogue;
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    float* crow = g.c + (row + r) * g.ldc;
    if (e.column_map) {
      epilogue_mapped<NV>(e, acc[r], row + r, col, crow, ncols);
    } else {
      epilogue_vectors<NV>(e, acc[r], row + r, col, crow, ncols);
    }
  }
}

// Rows [r0, r1) of one column tile, MR rows at a time, then the remainder. A one-vector tile
// (the last columns of a layer, or few of them) takes twelve rows at a time, so that it
// still has twelve independent accumulators.
template <int NV, bool kUnitK>
void column_tile(const Gemm& g, const float* b, int64_t r0, int64_t r1, int64_t col,
                 int64_t ncols) {
  int64_t r = r0;
  if (NV == 1) {
    for (; r + 2 * kMR <= r1; r += 2 * kMR) micro_tile<2 * kMR, 1, kUnitK>(g, b, r, col, ncols);
  }
  for (; r + kMR <= r1; r += kMR) micro_tile<kMR, NV, kUnitK>(g, b, r, col, ncols);
  switch (r1 - r) {
    case 5: micro_tile<5, NV, kUnitK>(g, b, r, col, ncols); break;
    case 4: micro_tile<4, NV, kUnitK>(g, b, r, col, ncols); break;
    case 3: micro_tile<3, NV, kUnitK>(g, b, r, col, ncols); break;
    case 2: micro_tile<2, NV, kUnitK>(g, b, r, col, ncols); break;
    case 1: micro_tile<1, NV, kUnitK>(g, b, r, col, ncols); break;
    default: break;
  }
}

template <bool kUnitK>
void gemm_rows(const Gemm& g, int64_t row_begin, int64_t row_end) {
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kRowBlock) {
    const int64_t r1 = std::min(row_end, r0 + kRowBlock);
    for (int64_t col = 0; col < g.cols; col += kTileCols) {
      const float* b = g.b + (col / kPanel) * g.b_panel_stride + col % kPanel;
      const int64_t ncols = std::min(kTileCols, g.cols - col);
      if (ncols > L) {
        column_tile<2, kUnitK>(g, b, r0, r1, col, ncols);
      } else {
        column_tile<1, kUnitK>(g, b, r0, r1, col, ncols);
      }
    }
  }
}

void gemm(const Gemm& g, int64_t row_begin, int64_t row_end) {
  if (g.a_k_stride == 1) {
    gemm_rows<true>(g, row_begin, row_end);
  } else {
    gemm_rows<false>(g, row_begin, row_end);
  }
}

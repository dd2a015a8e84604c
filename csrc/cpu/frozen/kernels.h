// The building blocks of the frozen CPU path (mf_kernels.freeze), as plain functions on raw
// fp32 pointers, and the table through which the engine calls the build for this CPU.
//
// Everything works on one image at a time, in NHWC: a feature map is a [P, C] row-major
// matrix (P = H*W positions, one row of C channels each, row stride `ld` >= C). Then
//   * a pointwise (1x1) convolution is a GEMM  Y[P, N] = X[P, K] W[K, N] + bias,
//   * a depthwise 3x3 convolution is a stencil vectorised over the channels of a row,
//   * the token projections are GEMMs with M (3 to 6) rows,
// and bias, activation, residual and channel shuffle are applied as the GEMM's results leave
// the registers (the epilogue), never as separate passes over memory.
//
// Weights are packed once, when the model is frozen (mf_kernels/freezing.py): a GEMM's
// W[K, N] is stored as ceil(N / kPanel) column panels, each K rows of kPanel floats, zero
// padded. The panel width does not depend on the instruction set, so a frozen model can be
// saved on one machine and run on another.
#pragma once

#include <cstdint>
#include <string>

#include "isa.h"

namespace mf_kernels {
namespace frozen {

// Columns per packed weight panel: two AVX-512 vectors, four AVX2 ones, eight SSE/NEON ones.
constexpr int64_t kPanel = 32;

enum class Activation : int32_t {
  kNone = 0,
  kRelu6 = 1,        // y = min(max(y, 0), 6)
  kDynamicRelu = 2,  // y = max(slope1[c] y, slope2[c] y), the authors' K = 2 dynamic ReLU
};

// What happens to a result y[r, c] between the accumulators and memory, in this order:
//   y += bias[c];  y = act(y);  y += residual[r * ld_residual + c'];  out[r * ldc + c'] = y
// with c' = column_map[c] when a map is given (a channel shuffle folded into the store),
// else c' = c. bias and the slopes are indexed by the GEMM's own column c.
struct Epilogue {
  const float* bias = nullptr;
  Activation act = Activation::kNone;
  const float* slope1 = nullptr;
  const float* slope2 = nullptr;
  const float* residual = nullptr;
  int64_t ld_residual = 0;
  const int32_t* column_map = nullptr;
};

// C[r, n] = epilogue( sum_k A[r, k] B[k, n] ),  r < rows, n < cols (the real columns).
//   A[r, k] = a[r * a_row_stride + k * a_k_stride]   (a transposed A is just other strides)
//   B[k, n] = b[(n / kPanel) * b_panel_stride + k * ldb + n % kPanel]
// Packed weights have b_panel_stride = K * kPanel and ldb = kPanel; a row-major [K, N] matrix
// whose N is at most one panel has b_panel_stride = 0 and ldb = its row stride. B must be
// readable up to the next multiple of the vector width past `cols` in every row (packed
// panels are zero padded; scratch matrices are allocated that wide).
struct Gemm {
  const float* a = nullptr;
  int64_t a_row_stride = 0, a_k_stride = 1;
  const float* b = nullptr;
  int64_t b_panel_stride = 0, ldb = kPanel;
  float* c = nullptr;
  int64_t ldc = 0;
  int64_t rows = 0, depth = 0, cols = 0;
  Epilogue epilogue;
};

// A depthwise 3x3 convolution, padding 1, stride 1 or 2, on `channels` channels:
//   y[oy, ox, c] = epilogue( sum_{ky,kx} w[ky*3+kx, c] x[s*oy+ky-1, s*ox+kx-1, c] )
// x[iy, ix, c] = x[(iy * width + ix) * ldx + c] (zero outside the map), weights tap-major
// [9, channels], y[(oy * out_width + ox) * ldy + c]. No column map.
struct Depthwise {
  const float* x = nullptr;
  int64_t height = 0, width = 0, ldx = 0;
  const float* w = nullptr;
  float* y = nullptr;
  int64_t out_height = 0, out_width = 0, ldy = 0;
  int64_t stride = 1, channels = 0;
  Epilogue epilogue;
};

// Cross-attention of one image's feature map x [P, C] (row stride ldx) with M tokens
// [M, C] (row stride ldt), `heads` groups of ch = C / heads channels, s = ch^-1/2.
//   m2f:  out[m, hc] = sum_p softmax_p(s <q[m, hc], x[p, hc]>) x[p, hc]
//   f2m:  y[p, hc] = x[p, hc] + sum_m softmax_m(s <x[p, hc], k[m, hc]>) v[m, hc]
// scratch: at least attention_scratch_floats(P, M, C) floats.
struct Attention {
  const float* x = nullptr;
  int64_t positions = 0, channels = 0, ldx = 0;
  int64_t tokens = 0, heads = 1;
  const float* q = nullptr;  // m2f queries, or f2m keys: [M, C], row stride ldt
  const float* v = nullptr;  // f2m values, row stride ldt
  int64_t ldt = 0;
  float* out = nullptr;      // m2f [M, C]; f2m y [P, C] with row stride ldx
  float* scratch = nullptr;
};

int64_t attention_scratch_floats(int64_t positions, int64_t tokens, int64_t channels);

struct KernelTable {
  Isa isa;
  int64_t lanes;  // fp32 lanes per vector
  // Rows [row_begin, row_end) of a GEMM; disjoint ranges may run on different threads.
  void (*gemm)(const Gemm& g, int64_t row_begin, int64_t row_end);
  // Output rows [row_begin, row_end) of a depthwise convolution.
  void (*depthwise)(const Depthwise& d, int64_t row_begin, int64_t row_end);
  void (*m2f_attention)(const Attention& a);
  void (*f2m_attention)(const Attention& a);
  // x[i] = gelu(x[i]) = x/2 (1 + erf(x / sqrt 2)), i < n (the Former's FFN).
  void (*gelu)(float* x, int64_t n);
};

// The table of the selected instruction set (selected_isa()).
const KernelTable& kernel_table();
// The table of a given one (the caller checks that the CPU supports it).
const KernelTable& kernel_table(Isa isa);
// The table named "baseline", "avx2" or "avx512"; ValueError if unknown or unsupported here.
const KernelTable& kernel_table(const std::string& name);

// One per instruction-set build (kernels_<isa>.cpp); null where that build is not compiled.
const KernelTable* baseline_kernels();
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();

}  // namespace frozen
}  // namespace mf_kernels

// The CUDA kernels of csrc/cuda/m2f_attention.cu, compiled for the CPU emulation (see emu.h) and
// registered as mf_emu::m2f_attention* on CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "emu.h"
#include "../../csrc/cuda/m2f_attention.cu"

TORCH_LIBRARY_FRAGMENT(mf_emu, m) {
  m.def("m2f_attention_with_lse(Tensor x, Tensor q, int heads) -> (Tensor, Tensor)",
        &mf_kernels::cuda_kernels::m2f_attention_with_lse_cuda);
  m.def("m2f_attention_backward(Tensor grad_out, Tensor x, Tensor q, Tensor out, Tensor lse,"
        " int heads) -> (Tensor, Tensor)",
        &mf_kernels::cuda_kernels::m2f_attention_backward_cuda);
}

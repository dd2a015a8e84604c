// The CUDA kernels of csrc/cuda/f2m_attention.cu, compiled for the CPU emulation (see emu.h) and
// registered as mf_emu::f2m_attention* on CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "emu.h"
#include "../../csrc/cuda/f2m_attention.cu"

TORCH_LIBRARY_FRAGMENT(mf_emu, m) {
  m.def("f2m_attention(Tensor x, Tensor k, Tensor v, int heads) -> Tensor",
        &mf_kernels::cuda_kernels::f2m_attention_cuda);
  m.def("f2m_attention_backward(Tensor grad_y, Tensor x, Tensor k, Tensor v, int heads)"
        " -> (Tensor, Tensor, Tensor)",
        &mf_kernels::cuda_kernels::f2m_attention_backward_cuda);
}

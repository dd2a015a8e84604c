// The CUDA kernels of csrc/cuda/dynamic_relu.cu, compiled for the CPU emulation (see emu.h) and
// registered as mf_emu::dynamic_relu* on CPU tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "emu.h"
#include "../../csrc/cuda/dynamic_relu.cu"

TORCH_LIBRARY_FRAGMENT(mf_emu, m) {
  m.def("dynamic_relu(Tensor x, Tensor slope, Tensor? intercept) -> Tensor",
        &mf_kernels::cuda_kernels::dynamic_relu_cuda);
  m.def("dynamic_relu_backward(Tensor grad_y, Tensor x, Tensor slope, Tensor? intercept)"
        " -> (Tensor, Tensor, Tensor)",
        &mf_kernels::cuda_kernels::dynamic_relu_backward_cuda);
}

"""Triton kernels of the three fused ops, one module per op (forward and backward).

Each module registers ``torch.ops.mf_kernels.triton_<op>`` and ``triton_<op>_backward`` with
``torch.library.triton_op`` and exposes a function named like the op, which the ``"triton"``
backend of :mod:`mf_kernels.backends` loads lazily. Importing Triton is deferred to that
first use, so this package imports nothing here.

Triton takes CUDA tensors; with ``TRITON_INTERPRET=1`` (set before the first import) it takes
CPU tensors through the interpreter, which is how CI tests these kernels.
"""

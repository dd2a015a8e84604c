"""Compile every Triton kernel launch of mf_kernels for an H100 (sm_90) without a GPU.

Without a GPU, CI runs the kernels only through the interpreter, which accepts programs
that the compiler rejects (and says nothing of registers). This script runs the ops' host
code on CPU tensors with ``wrap_triton`` replaced by a recorder that, instead of launching,
compiles each distinct launch (kernel, argument types, constexprs, num_warps) for sm_90
down to cubin and prints ptxas's register and spill counts. Nothing is executed.

    TRITON_INTERPRET=0 python tools/triton_sm90_compile.py [--quick]

Exit status 1 when a kernel fails to compile or, with --no-spills, spills. It mimics the
JIT's specialisation (ints equal to 1 become constants, 16-divisibility hints on pointers
and ints) through Triton's ASTSource/GPUTarget, which may change between Triton versions.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run with TRITON_INTERPRET=0: the interpreter replaces the kernels")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import numerics  # noqa: E402
from mf_kernels.triton import dynamic_relu, f2m_attention, m2f_attention  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


class Compiler:
    """Stands in for ``wrap_triton``: ``Compiler(kernel)[grid](*args, **kwargs)`` compiles."""

    seen: dict = {}
    failures: list = []

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return self.compile

    def compile(self, *args, **kwargs):
        kernel = self.kernel
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        bound = dict(zip(kernel.arg_names, args), **kwargs)
        signature, constants, attrs = {}, {}, {}
        for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
            value = bound[name]
            if param.is_constexpr or value is None or (type(value) is int and value == 1):
                signature[name], constants[name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[name] = POINTER_TYPES[value.dtype]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(value, bool):
                signature[name] = "i1"
            elif isinstance(value, int):
                signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(value, float):
                signature[name] = "fp32"
            else:
                raise TypeError(f"{kernel.fn.__name__}: argument {name} of type {type(value)}")
        key = (kernel.fn.__name__, str(sorted(signature.items())), str(sorted(constants.items())),
               str(sorted(options.items())))
        if key in Compiler.seen:
            return
        shown = {k: v for k, v in constants.items() if k.isupper()}
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constants, attrs),
                                      target=TARGET, options=options)
        except Exception as error:  # a compile error is what this script looks for
            Compiler.failures.append(f"{kernel.fn.__name__} {shown}: {error}")
            print(f"FAILED {kernel.fn.__name__} {options} {shown}\n{error}")
            return
        Compiler.seen[key] = usage = ptxas_usage(compiled.asm["ptx"])
        print(f"{kernel.fn.__name__:26s} warps={options.get('num_warps')} {shown} -> "
              f"{usage[0]} registers, {usage[1]} bytes spilled")


def ptxas_usage(ptx: str):
    """(registers, spill store bytes) from ``ptxas -v`` for sm_90a."""
    if not os.path.exists(PTXAS):
        return "?", "?"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    finally:
        os.unlink(f.name)
    registers = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    return (int(registers.group(1)) if registers else "?", int(spills.group(1)) if spills else 0)


def run_all(quick: bool) -> None:
    # Mobile-Former-like maps: 56x56 with few channels, 14x14 with 120 channels per head, a
    # large batch of 7x7 maps, and a tiny odd one with M = 1 and M = 100.
    shapes = [(2, 240, 14, 14), (2, 12, 3, 3)] if quick else \
        [(1, 48, 56, 56), (2, 240, 14, 14), (64, 128, 7, 7), (2, 12, 3, 3)]
    dtypes = [torch.bfloat16] if quick else [torch.float32, torch.float16, torch.bfloat16]
    for dtype in dtypes:
        for layout in ("contiguous", "channels_last"):
            for B, C, H, W in shapes:
                x = numerics.make_feature_map((B, C, H, W), dtype, layout)
                slope, intercept = torch.randn(2, B, C, 2).to(dtype)
                dynamic_relu._dynamic_relu_op(x, slope, None)
                dynamic_relu._dynamic_relu_op(x, slope, intercept)
                dynamic_relu._dynamic_relu_backward_op(x, x, slope, intercept)
                for M in ((6, 1, 100) if C == 12 else (6,)):
                    tokens = torch.randn(B, M, C).to(dtype)
                    m2f_attention._m2f_attention_op(x, tokens, 2)
                    m2f_attention._m2f_attention_backward_op(tokens, x, tokens, tokens, 2)
                    f2m_attention._f2m_attention_op(x, tokens, tokens, 2)
                    f2m_attention._f2m_attention_backward_op(x, x, tokens, tokens, 2)
    # The split-and-combine path of m2f with a small split.
    m2f_attention.POSITIONS_PER_SPLIT = 64
    x = numerics.make_feature_map((1, 48, 28, 28), dtypes[-1], "channels_last")
    tokens = torch.randn(1, 6, 48).to(dtypes[-1])
    m2f_attention._m2f_attention_op(x, tokens, 2)
    m2f_attention._m2f_attention_backward_op(tokens, x, tokens, tokens, 2)
    m2f_attention.POSITIONS_PER_SPLIT = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="bf16 and two shapes only")
    parser.add_argument("--no-spills", action="store_true", help="fail on register spills")
    args = parser.parse_args()
    for module in (dynamic_relu, m2f_attention, f2m_attention):
        module.wrap_triton = Compiler  # the host code looks wrap_triton up in its module
    run_all(args.quick)
    spilled = [k for k, (_, spill) in Compiler.seen.items() if isinstance(spill, int) and spill]
    print(f"{len(Compiler.seen)} kernel variants compiled for sm_90, "
          f"{len(Compiler.failures)} failed, {len(spilled)} spill")
    return 1 if Compiler.failures or (args.no_spills and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile every Triton kernel launch of mf_kernels for an H100/H200 (sm_90) without a GPU.

Without a GPU, CI runs the kernels only through the interpreter, which accepts programs that
the compiler rejects (and says nothing of registers). This script runs the ops' host code on
CPU tensors with ``wrap_triton`` replaced by a recorder that, instead of launching, compiles
each distinct launch (kernel, argument types, constexprs, num_warps) for sm_90 down to cubin
and reads ptxas's registers, spill stores and loads, and Triton's shared memory. The host code
plans for an H200 (132 SMs), so the block sizes, splits and token chunks are those a real
launch picks. Nothing is executed.

Configurations: every call site of the seven Mobile-Former variants at 224x224
(tools/model_sites.py), batch 1 and 128, fp32/fp16/bf16, contiguous and channels_last, and for
the attention ops M = 3, 6 and 100 tokens (100: a detection head's queries). ``--quick``: bf16,
channels_last, batch 128, the widest and the narrowest site of each op.

    TRITON_INTERPRET=0 python tools/triton_sm90_compile.py [--quick] [--no-spills] [--json F]

Exit status 1 when a kernel fails to compile or, with --no-spills, spills. It mimics the JIT's
specialisation (ints equal to 1 become constants, 16-divisibility hints on pointers and ints)
through Triton's ASTSource/GPUTarget, which may change between Triton versions.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run with TRITON_INTERPRET=0: the interpreter replaces the kernels")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from mf_kernels.triton import dynamic_relu, f2m_attention, m2f_attention  # noqa: E402
from model_sites import model_sites  # noqa: E402

MODULES = (dynamic_relu, m2f_attention, f2m_attention)
TARGET = GPUTarget("cuda", 90, 32)
SMS = 132  # H100 SXM and H200
POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
DTYPE_NAMES = {"*fp16": "fp16", "*bf16": "bf16", "*fp32": "fp32"}
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
TOKEN_COUNTS = (3, 6, 100)


@dataclasses.dataclass
class TritonUsage:
    kernel: str
    dtype: str          # of the first tensor argument
    blocks: str         # the upper-case constexprs (block sizes, flags)
    warps: int
    registers: int
    spill_stores: int   # bytes per thread
    spill_loads: int
    shared: int         # bytes per program
    launched_for: str   # the first configuration that launched it


class Compiler:
    """Stands in for ``wrap_triton``: ``Compiler(kernel)[grid](*args, **kwargs)`` compiles."""

    seen: Dict[tuple, TritonUsage] = {}
    failures: List[str] = []
    context: str = ""
    verbose: bool = True

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
        blocks = " ".join(f"{k}={v}" for k, v in constants.items() if k.isupper())
        dtype = next((DTYPE_NAMES[t] for t in signature.values() if t in DTYPE_NAMES), "?")
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constants, attrs),
                                      target=TARGET, options=options)
        except Exception as error:  # a compile error is what this script looks for
            Compiler.failures.append(f"{kernel.fn.__name__} {blocks} ({Compiler.context}): {error}")
            print(f"FAILED {kernel.fn.__name__} {options} {blocks}\n{error}")
            return
        registers, stores, loads = ptxas_usage(compiled.asm["ptx"])
        usage = TritonUsage(kernel.fn.__name__, dtype, blocks, options.get("num_warps", 4),
                            registers, stores, loads, int(compiled.metadata.shared),
                            Compiler.context)
        Compiler.seen[key] = usage
        if Compiler.verbose:
            print(f"{usage.kernel:26s} {dtype} warps={usage.warps} {blocks} -> {registers} regs, "
                  f"spills {stores}/{loads} B, smem {usage.shared} B   [{Compiler.context}]")


def ptxas_usage(ptx: str) -> Tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v`` for sm_90a."""
    if not os.path.exists(PTXAS):
        raise RuntimeError(f"Triton's ptxas is missing ({PTXAS})")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    finally:
        os.unlink(f.name)
    registers = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return (int(registers.group(1)) if registers else -1,
            int(spills.group(1)) if spills else 0, int(spills.group(2)) if spills else 0)


def _map(B, C, H, W, dtype, layout):
    """An uninitialised map: nothing runs, only the host code's decisions matter."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return torch.empty((B, C, H, W), dtype=dtype, memory_format=fmt)


def configurations(quick: bool) -> Iterator[Tuple[str, tuple, torch.dtype, str, int]]:
    """(op, site, dtype, layout, batch) of every launch to compile."""
    sites = model_sites()
    relu_sites, m2f_sites, f2m_sites = sites.dynamic_relu, sites.m2f_attention, sites.f2m_attention
    dtypes = (torch.bfloat16,) if quick else (torch.float32, torch.float16, torch.bfloat16)
    layouts = ("channels_last",) if quick else ("contiguous", "channels_last")
    batches = (128,) if quick else (1, 128)
    if quick:  # the widest and the narrowest head, the largest and the smallest map
        relu_sites = [relu_sites[0], relu_sites[-1]]
        m2f_sites = [m2f_sites[0], m2f_sites[-1]]
        f2m_sites = [f2m_sites[0], f2m_sites[-1]]
    for dtype in dtypes:
        for layout in layouts:
            for batch in batches:
                for site in relu_sites:
                    yield "dynamic_relu", site, dtype, layout, batch
                for op, op_sites in (("m2f_attention", m2f_sites), ("f2m_attention", f2m_sites)):
                    for site in op_sites:
                        for M in TOKEN_COUNTS:
                            yield op, site._replace(M=M), dtype, layout, batch


def launch(op: str, site: tuple, dtype: torch.dtype, layout: str, batch: int) -> None:
    """Runs the host code of ``op``'s forward and backward for one configuration."""
    x = _map(batch, site.C, site.H, site.W, dtype, layout)
    if op == "dynamic_relu":
        slope = torch.empty(batch, site.C, site.K, dtype=dtype)
        dynamic_relu._dynamic_relu_op(x, slope, None)
        dynamic_relu._dynamic_relu_op(x, slope, slope)
        dynamic_relu._dynamic_relu_backward_op(x, x, slope, slope)
        return
    tokens = torch.empty(batch, site.M, site.C, dtype=dtype)
    if op == "m2f_attention":
        out, lse = m2f_attention._m2f_attention_op(x, tokens, site.heads)
        m2f_attention._m2f_attention_backward_op(tokens, x, tokens, out, lse, site.heads)
    else:
        f2m_attention._f2m_attention_op(x, tokens, tokens, site.heads)
        f2m_attention._f2m_attention_backward_op(x, x, tokens, tokens, site.heads)


def collect(quick: bool = False, verbose: bool = True) -> List[TritonUsage]:
    """Compiles every configuration; returns one TritonUsage per distinct compiled kernel."""
    Compiler.seen, Compiler.failures, Compiler.verbose = {}, [], verbose
    saved = [(m, m.wrap_triton, getattr(m, "target_programs", None)) for m in MODULES]
    try:
        for module in MODULES:
            module.wrap_triton = Compiler  # the host code looks wrap_triton up in its module
            if hasattr(module, "target_programs"):  # plan for the GPU, not the interpreter
                module.target_programs = lambda device: 2 * SMS
        for op, site, dtype, layout, batch in configurations(quick):
            name = str(dtype).replace("torch.", "")
            Compiler.context = (f"{op} C={site.C} {site.H}x{site.W}"
                                + (f" M={site.M} heads={site.heads}" if op != "dynamic_relu" else
                                   f" K={site.K}") + f" B={batch} {name} {layout}")
            launch(op, site, dtype, layout, batch)
    finally:
        for module, wrap, programs in saved:
            module.wrap_triton = wrap
            if programs is not None:
                module.target_programs = programs
    return list(Compiler.seen.values())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="bf16, channels_last, batch 128, two sites an op")
    parser.add_argument("--no-spills", action="store_true", help="fail on register spills")
    parser.add_argument("--json", help="write the rows (and failures) to this JSON file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    rows = collect(args.quick, verbose=not args.quiet)
    spilled = [r for r in rows if r.spill_stores or r.spill_loads]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [dataclasses.asdict(r) for r in rows],
                       "failures": Compiler.failures}, f, indent=1)
    print(f"{len(rows)} kernel variants compiled for sm_90, {len(Compiler.failures)} failed, "
          f"{len(spilled)} spill")
    return 1 if Compiler.failures or (args.no_spills and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())

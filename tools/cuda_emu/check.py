"""Runs the emulated CUDA kernels (build.py) against mobileformer.functional, on the CPU.

Checks forward and every gradient over layouts, dtypes, odd sizes, token counts and heads. It
exercises the kernels' index math, tiling, splits and synchronisation; it says nothing about
speed or about hardware behaviour the emulation does not model (see emu.h).
Set MF_EMU_SMS to change the SM count the host code plans for (default 4).
"""
import itertools
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))

from mobileformer import functional as F  # noqa: E402
import numerics  # noqa: E402
from build import load  # noqa: E402

ops = load()
failures = []


def compare(name, actual, expected_fp32, expected_low, dtype):
    try:
        if dtype in (torch.float16, torch.bfloat16):
            numerics.assert_within_2x(actual, expected_low, expected_fp32, name)
        else:
            numerics.assert_tight(actual, expected_fp32.to(dtype), name)
    except AssertionError as e:
        failures.append(str(e))
        print("FAIL", e)


def reference_grads(fn, inputs, grad_output, dtype):
    """Reference output and gradients in `dtype` and in fp32 (fp64 stays fp64)."""
    hi = torch.float64 if dtype == torch.float64 else torch.float32
    results = {}
    for d in {hi, dtype}:
        leaves = [None if t is None else t.detach().to(d).requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        grads = numerics.grads(out, [t for t in leaves if t is not None], grad_output.to(d))
        results[d] = (out.detach(), [g.detach() for g in grads])
    return results[hi], results[dtype]


def check_layout(name, actual, x):
    want = numerics.__dict__.get("_unused")  # noqa
    fmt = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format
    if not actual.is_contiguous(memory_format=fmt):
        failures.append(f"{name}: wrong layout {actual.stride()}")
        print("FAIL layout", name, actual.stride())


def run_dynamic_relu(B, C, H, W, K, with_intercept, layout, dtype, ties=False):
    x = numerics.make_feature_map((B, C, H, W), dtype, layout)
    if ties:
        x = x.clone().masked_fill(torch.rand(x.shape) < 0.3, 0.0) if layout != "sliced" else x
    slope = torch.randn(B, C, K).to(dtype)
    if ties and K > 1:
        slope[:, :, 1] = slope[:, :, 0]
    intercept = torch.randn(B, C, K).to(dtype) * 0.1 if with_intercept else None
    gy = numerics.make_feature_map((B, C, H, W), dtype, layout)
    tag = f"drelu B{B} C{C} {H}x{W} K{K} i{int(with_intercept)} {layout} {dtype} ties{int(ties)}"
    y = ops.dynamic_relu(x, slope, intercept)
    gx, gs, gt = ops.dynamic_relu_backward(gy, x, slope, intercept)
    inputs = [x, slope, intercept]
    (ref, rg), (low, lg) = reference_grads(
        lambda a, b, c=None: F.dynamic_relu(a, b, c), inputs, gy, dtype)
    compare(tag + " y", y, ref, low, dtype)
    check_layout(tag + " y", y, x)
    check_layout(tag + " gx", gx, x)
    compare(tag + " grad_x", gx, rg[0], lg[0], dtype)
    compare(tag + " grad_slope", gs, rg[1], lg[1], dtype)
    if with_intercept:
        compare(tag + " grad_intercept", gt, rg[2], lg[2], dtype)
    else:  # grad_intercept of a zero intercept
        inputs0 = [x, slope, torch.zeros_like(slope)]
        (r0, g0), (l0, gl0) = reference_grads(lambda a, b, c: F.dynamic_relu(a, b, c), inputs0, gy, dtype)
        compare(tag + " grad_intercept0", gt, g0[2], gl0[2], dtype)


def run_m2f(B, C, H, W, M, heads, layout, dtype):
    x = numerics.make_feature_map((B, C, H, W), dtype, layout)
    q = torch.randn(B, M, C).to(dtype)
    go = torch.randn(B, M, C).to(dtype)
    tag = f"m2f B{B} C{C} {H}x{W} M{M} h{heads} {layout} {dtype}"
    out, lse = ops.m2f_attention_with_lse(x, q, heads)
    gx, gq = ops.m2f_attention_backward(go, x, q, out, lse, heads)
    (ref, rg), (low, lg) = reference_grads(lambda a, b: F.m2f_attention(a, b, heads), [x, q], go, dtype)
    compare(tag + " out", out, ref, low, dtype)
    hi = torch.float64 if dtype == torch.float64 else torch.float32
    D = C // heads
    scores = torch.einsum("bmhd,bhdp->bhmp", q.to(hi).view(B, M, heads, D),
                          x.to(hi).reshape(B, heads, D, H * W)) * D ** -0.5
    compare(tag + " lse", lse, scores.logsumexp(-1), scores.logsumexp(-1), hi)
    check_layout(tag + " gx", gx, x)
    compare(tag + " grad_x", gx, rg[0], lg[0], dtype)
    compare(tag + " grad_q", gq, rg[1], lg[1], dtype)


def run_f2m(B, C, H, W, M, heads, layout, dtype):
    x = numerics.make_feature_map((B, C, H, W), dtype, layout)
    k = torch.randn(B, M, C).to(dtype)
    v = torch.randn(B, M, C).to(dtype)
    gy = numerics.make_feature_map((B, C, H, W), dtype, layout)
    tag = f"f2m B{B} C{C} {H}x{W} M{M} h{heads} {layout} {dtype}"
    y = ops.f2m_attention(x, k, v, heads)
    gx, gk, gv = ops.f2m_attention_backward(gy, x, k, v, heads)
    (ref, rg), (low, lg) = reference_grads(lambda a, b, c: F.f2m_attention(a, b, c, heads), [x, k, v], gy, dtype)
    compare(tag + " y", y, ref, low, dtype)
    check_layout(tag + " y", y, x)
    check_layout(tag + " gx", gx, x)
    compare(tag + " grad_x", gx, rg[0], lg[0], dtype)
    compare(tag + " grad_k", gk, rg[1], lg[1], dtype)
    compare(tag + " grad_v", gv, rg[2], lg[2], dtype)


def run_empty():
    """B = 0, M = 0, H*W = 0: correctly shaped results, zeros where a sum is empty."""
    def expect(name, actual, expected):
        if actual.shape != expected.shape or not torch.equal(actual, expected):
            failures.append(f"{name}: got {actual.shape}, expected {expected.shape}")
            print("FAIL", name, actual.shape, expected.shape)

    for (B, C, H, W, M) in [(0, 4, 3, 3, 2), (2, 4, 0, 3, 2), (2, 4, 3, 3, 0)]:
        x = torch.randn(B, C, H, W)
        q = torch.randn(B, M, C)
        out, lse = ops.m2f_attention_with_lse(x, q, 2)
        expect(f"m2f empty {B, C, H, W, M} out", out, F.m2f_attention(x, q, 2))
        gx, gq = ops.m2f_attention_backward(torch.ones_like(q), x, q, out, lse, 2)
        expect("m2f empty grad_x", gx, torch.zeros_like(x))
        expect("m2f empty grad_q", gq, torch.zeros_like(q))
        k, v = torch.randn(B, M, C), torch.randn(B, M, C)
        y = ops.f2m_attention(x, k, v, 2)
        expect(f"f2m empty {B, C, H, W, M} y", y, x if M == 0 else F.f2m_attention(x, k, v, 2))
        gy = torch.randn_like(x)
        gx, gk, gv = ops.f2m_attention_backward(gy, x, k, v, 2)
        expect("f2m empty grad_x", gx, gy)
        expect("f2m empty grad_k", gk, torch.zeros_like(k))
        expect("f2m empty grad_v", gv, torch.zeros_like(v))
        s = torch.randn(B, C, 2)
        expect("drelu empty y", ops.dynamic_relu(x, s, None), F.dynamic_relu(x, s))
        if x.numel() == 0:
            gx, gs, gt = ops.dynamic_relu_backward(torch.ones_like(x), x, s, None)
            expect("drelu empty grad_x", gx, torch.zeros_like(x))
            expect("drelu empty grad_slope", gs, torch.zeros_like(s))
            expect("drelu empty grad_intercept", gt, torch.zeros_like(s))
    # Bad input: the CPU kernels' errors.
    for call, error in [
        (lambda: ops.m2f_attention_with_lse(torch.randn(1, 6, 2, 2), torch.randn(1, 2, 6), 4), ValueError),
        (lambda: ops.m2f_attention_with_lse(torch.randn(1, 6, 2, 2), torch.randn(1, 2, 5), 2), ValueError),
        (lambda: ops.f2m_attention(torch.randn(1, 6, 2, 2), torch.randn(1, 2, 6), torch.randn(1, 3, 6), 2), ValueError),
        (lambda: ops.f2m_attention(torch.randn(1, 6, 2, 2), torch.randn(1, 2, 6).double(), torch.randn(1, 2, 6), 2), TypeError),
        (lambda: ops.dynamic_relu(torch.randn(1, 6, 2, 2), torch.randn(1, 6, 0), None), ValueError),
        (lambda: ops.dynamic_relu(torch.randint(0, 3, (1, 6, 2, 2)), torch.randn(1, 6, 2), None), TypeError),
    ]:
        try:
            call()
            failures.append(f"no {error.__name__}")
            print("FAIL: no error")
        except error:
            pass


def run_misaligned():
    """x and grad_y at an odd storage offset: the scalar (unvectorised) path."""
    for dtype in (torch.float32, torch.float16):
        B, C, H, W = 2, 8, 4, 4
        x = torch.randn(B * C * H * W + 1).to(dtype)[1:].view(B, C, H, W)
        gy = torch.randn(B * C * H * W + 1).to(dtype)[1:].view(B, C, H, W)
        slope = torch.randn(B, C, 2).to(dtype)
        y = ops.dynamic_relu(x, slope, None)
        gx, gs, _ = ops.dynamic_relu_backward(gy, x, slope, None)
        (ref, rg), (low, lg) = reference_grads(lambda a, b: F.dynamic_relu(a, b), [x, slope], gy, dtype)
        compare(f"drelu misaligned {dtype} y", y, ref, low, dtype)
        compare(f"drelu misaligned {dtype} grad_x", gx, rg[0], lg[0], dtype)
        compare(f"drelu misaligned {dtype} grad_slope", gs, rg[1], lg[1], dtype)


def main():
    torch.manual_seed(0)
    run_empty()
    run_misaligned()
    quick = "--quick" in sys.argv
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    layouts = numerics.LAYOUTS
    # dynamic_relu: vector and scalar paths (P or C a multiple of the vector width or not),
    # K = 1, 2, 3, 5 (two passes), ties.
    for dtype, layout in itertools.product(dtypes, layouts):
        for (B, C, H, W) in [(2, 8, 4, 4), (1, 3, 5, 7), (2, 16, 9, 8)]:
            for K in ([2] if quick else [1, 2, 3, 5]):
                run_dynamic_relu(B, C, H, W, K, K != 2, layout, dtype)
        run_dynamic_relu(2, 8, 6, 6, 2, False, layout, dtype, ties=True)
        run_dynamic_relu(2, 8, 6, 6, 3, True, layout, dtype, ties=True)
    # Large plane: several position splits.
    run_dynamic_relu(1, 2, 48, 48, 2, False, "contiguous", torch.float32)
    run_dynamic_relu(1, 8, 40, 40, 3, True, "channels_last", torch.float32)
    # Attention: M = 1, 6, 40 (two chunks), 100; heads 1, 2, 4; C/heads = 20; odd sizes.
    configs = [(2, 40, 5, 7, 6, 2), (1, 20, 3, 3, 1, 1), (1, 80, 9, 13, 6, 4), (2, 8, 11, 12, 3, 2)]
    if not quick:
        configs += [(1, 40, 6, 5, 40, 2), (1, 40, 4, 4, 100, 2), (1, 20, 1, 1, 6, 1)]
    for dtype, layout in itertools.product(dtypes, layouts):
        for cfg in configs:
            run_m2f(*cfg, layout, dtype)
            run_f2m(*cfg, layout, dtype)
    # Many positions: several splits and tiles.
    run_m2f(1, 16, 20, 21, 5, 2, "contiguous", torch.float32)
    run_f2m(1, 16, 20, 21, 5, 2, "channels_last", torch.float32)
    run_m2f(1, 16, 20, 21, 50, 2, "channels_last", torch.float32)
    run_f2m(1, 16, 20, 21, 50, 2, "contiguous", torch.float32)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

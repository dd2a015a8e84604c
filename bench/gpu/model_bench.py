"""Stage 2 of the device script: the whole MF-294M, one row per process.

    python bench/gpu/model_bench.py train --impl reference|cuda|triton|compiled --json OUT.json
    python bench/gpu/model_bench.py infer --impl reference|cuda|triton|frozen --json OUT.json
    ... --device cpu --tiny     # the dry run: MF-26M at 64 px, batch 2, CPU kernels

* train: one training step (forward under bf16 autocast, cross-entropy, backward, SGD with
  momentum, zero_grad) at batch 128, 224 px, channels_last; the reference model eager, the
  accelerated model (``mf_kernels.accelerate``) with the cuda or the triton backend forced, or
  ``torch.compile`` of the reference (its compile time: the first step less a median step).
  Reports images/s (batch / median step), the peak memory of a step, the first step's loss
  (the same weights and images in every row, so the rows' losses should agree to bf16 noise).
* infer: fp16, eval, channels_last, batch 1 and 32; eager and replayed from a CUDA graph
  (captured after a warm-up on a side stream); median latency, and the logits' error against the
  fp32 reference (max |a - b| / max |b|).

One process per row, so that a kernel that corrupts the CUDA context fails its row only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mf_kernels  # noqa: E402
from mf_kernels.benchmarking.builders import build_input, build_model  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def select_backend(impl: str, device) -> None:
    if impl in ("cuda", "triton", "cpu"):
        mf_kernels.set_backend(impl)


def train_row(args, device) -> Dict[str, object]:
    accelerated = args.impl in ("cuda", "triton", "cpu")
    select_backend(args.impl, device)
    model = build_model(args.variant, accelerated=accelerated, compiled=False,
                        dtype=torch.float32, device=device, channels_last=True, train=True)
    if args.impl == "compiled":
        model = torch.compile(model, backend="eager" if device.type == "cpu" else "inductor")
    x = build_input(args.batch, args.size, torch.float32, device, channels_last=True)
    labels = torch.randint(0, 1000, (args.batch,), generator=torch.Generator().manual_seed(0))
    labels = labels.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    autocast_dtype = torch.bfloat16

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype):
            loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    sync(device)
    t0 = time.perf_counter()
    first_loss = step().item()  # compiles forward and backward (compiled), JIT, backend choice
    first = time.perf_counter() - t0
    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    median = timed(step, device, args.repeats)
    result = {"images_per_s": args.batch / median, "median_step_ms": median * 1e3,
              "first_step_s": first, "loss_step1": first_loss}
    if args.impl == "compiled":
        result["compile_s"] = max(0.0, first - median)
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def capture(model, x):
    """One forward captured into a CUDA graph; returns (replay, static output)."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(static_x)
    return graph.replay, static_out


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def infer_row(args, device) -> Dict[str, object]:
    select_backend(args.impl if args.impl != "frozen" else "auto", device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    reference = build_model(args.variant, accelerated=False, compiled=False,
                            dtype=torch.float32, device=device, channels_last=True)
    model = build_model(args.variant, accelerated=args.impl != "reference", compiled=False,
                        frozen=args.impl == "frozen", dtype=dtype, device=device,
                        channels_last=True)
    result: Dict[str, object] = {}
    with torch.inference_mode():
        for batch in args.infer_batches:
            x = build_input(batch, args.size, dtype, device, channels_last=True)
            expected = reference(x.float())
            out = model(x)
            row = {"rel_err_vs_fp32_reference": rel_err(out, expected),
                   "eager_ms": timed(lambda: model(x), device, args.repeats) * 1e3}
            if device.type == "cuda":
                try:
                    replay, static_out = capture(model, x)
                    replay()
                    row["graph_rel_err_vs_eager"] = rel_err(static_out, out)
                    row["cuda_graph_ms"] = timed(replay, device, args.repeats) * 1e3
                except RuntimeError as error:  # a capture failure is this row's result
                    row["cuda_graph_error"] = f"{type(error).__name__}: {str(error)[:300]}"
            else:
                row["cuda_graph"] = "skipped: CPU"
            result[f"b{batch}"] = row
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", choices=("train", "infer"))
    parser.add_argument("--impl", required=True,
                        choices=("reference", "cuda", "triton", "cpu", "compiled", "frozen"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    args.variant, args.size, args.batch, args.repeats = "mobileformer_294m", 224, 128, 10
    args.infer_batches = (1, 32)
    if args.tiny:
        args.variant, args.size, args.batch, args.repeats = "mobileformer_26m", 64, 2, 2
        args.infer_batches = (1, 2)
    device = torch.device(args.device)
    record = {"row": args.row, "impl": args.impl, "variant": args.variant, "size": args.size,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    try:
        record.update(train_row(args, device) if args.row == "train" else infer_row(args, device))
        status = 0
    except Exception as error:  # the row's result: written, then the process exits 1
        record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
        status = 1
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record))
    return status


if __name__ == "__main__":
    sys.exit(main())

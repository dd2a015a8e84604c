"""One process of tests/test_distributed.py, started by ``torchrun --nproc_per_node=2``.

Trains the accelerated Mobile-Former for STEPS steps on this rank's shard of each combined
batch, on the CPU with the gloo backend, once under DistributedDataParallel and once under
FSDP2 (``fully_shard`` on every block and on the root), and saves the resulting state_dicts.
The model, data, loss and optimizer are defined here once, for the workers and for the test's
single-process run alike.

float64, so that "equal" can mean equal to 1e-10: in float32 AdamW's first steps turn
rounding noise in gradients whose exact value is 0 (e.g. the bias of the head's Linear,
which a BatchNorm follows) into updates of +-lr, in any two runs that sum in different orders.
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import mf_kernels
import mobileformer  # noqa: F401  (registers the models with timm)

STEPS = 2
WORLD = 2
PER_RANK = 4  # images per process; the combined batch is WORLD x PER_RANK
NUM_CLASSES = 10
DTYPE = torch.float64


def make_model() -> torch.nn.Module:
    import timm
    torch.manual_seed(0)
    model = timm.create_model("mobile_former_26m", num_classes=NUM_CLASSES)
    return mf_kernels.accelerate(model).to(DTYPE)


def make_optimizer(model):
    from timm.optim import create_optimizer_v2
    # The authors' AdamW with weight decay (no decay on biases and norms), a larger lr so that
    # two steps move every weight visibly.
    return create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.2)


def combined_batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(WORLD * PER_RANK, 3, 64, 64, generator=gen, dtype=DTYPE),
             torch.randint(0, NUM_CLASSES, (WORLD * PER_RANK,), generator=gen))
            for _ in range(STEPS)]


def shard(batch, rank: int):
    images, labels = batch
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return images[rows], labels[rows]


def loss_fn(logits, labels):
    return F.cross_entropy(logits, labels, label_smoothing=0.1)


def clip(model):
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)


def full_state_dict(model) -> dict:
    """Plain tensors (FSDP2 keeps DTensor shards; gather them)."""
    from torch.distributed.tensor import DTensor
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in model.state_dict().items()}


def train(model, net, rank: int) -> dict:
    optimizer = make_optimizer(model)
    for batch in combined_batches():
        images, labels = shard(batch, rank)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(images), labels).backward()
        clip(model)
        optimizer.step()
    return full_state_dict(model)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    out = parser.parse_args().out
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == WORLD

    model = make_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    torch.save(train(model, ddp, rank), os.path.join(out, f"ddp_rank{rank}.pt"))

    from torch.distributed.fsdp import fully_shard
    model = make_model()
    for block in model.features:
        fully_shard(block)
    fully_shard(model)
    torch.save(train(model, model, rank), os.path.join(out, f"fsdp_rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

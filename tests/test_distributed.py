"""The accelerated model trains under DistributedDataParallel and FSDP2 as the authors trained
(their command: torch.distributed.launch --nproc_per_node=8): two CPU processes with the gloo
backend, two steps, and the parameters equal a single-process run over the combined batch.

BatchNorm. The authors trained without SyncBatchNorm (--sync-bn is not in their command), so
every process normalises with its own shard's batch statistics; SyncBatchNorm would not run
here anyway (it needs GPU tensors). A single process that normalised the whole combined batch
would therefore compute another function. The single-process run below computes the one that
DDP computes: it runs the forward once per shard (each shard's own BN statistics), averages
the shards' losses (DDP averages the shards' gradients), then takes one optimizer step. The
running statistics a BN layer keeps are rank 0's (DDP broadcasts rank 0's buffers before each
forward; FSDP never syncs them), so the reference keeps those of shard 0 and restores them
after the other shards' forwards. Buffers do not influence training-mode outputs.
"""
import os
import subprocess
import sys

import pytest
import torch

import distributed_worker as worker

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def single_process_reference() -> dict:
    model = worker.make_model()
    optimizer = worker.make_optimizer(model)
    for batch in worker.combined_batches():
        optimizer.zero_grad(set_to_none=True)
        for rank in range(worker.WORLD):
            saved = {k: b.clone() for k, b in model.named_buffers()} if rank else None
            images, labels = worker.shard(batch, rank)
            (worker.loss_fn(model(images), labels) / worker.WORLD).backward()
            if saved is not None:
                for k, b in model.named_buffers():
                    b.copy_(saved[k])
        worker.clip(model)
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    pytest.importorskip("timm")
    out = tmp_path_factory.mktemp("distributed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS,
                                                       os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={worker.WORLD}", os.path.join(TESTS, "distributed_worker.py"),
               str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {name: [torch.load(out / f"{name}_rank{r}.pt", weights_only=True)
                   for r in range(worker.WORLD)] for name in ("ddp", "fsdp")}


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("timm")
    return single_process_reference()


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_over_the_combined_batch(two_process_results, reference,
                                                                 wrapper):
    rank0, rank1 = two_process_results[wrapper]
    initial = worker.make_model().state_dict()
    params = {name for name, _ in worker.make_model().named_parameters()}
    assert set(rank0) == set(reference)
    for key, expected in reference.items():
        torch.testing.assert_close(rank0[key], expected, rtol=1e-10, atol=1e-10, msg=key)
        if key in params:  # the ranks agree on every weight (buffers are per rank)
            torch.testing.assert_close(rank1[key], rank0[key], rtol=1e-12, atol=1e-12, msg=key)
    moved = [k for k in params if not torch.equal(reference[k], initial[k])]
    assert len(moved) == len(params), "some weights did not train"


def test_per_shard_statistics_matter(reference):
    """The comparison above can fail: normalising the combined batch at once (what a naive
    single-process run does) gives other weights."""
    model = worker.make_model()
    optimizer = worker.make_optimizer(model)
    for images, labels in worker.combined_batches():
        optimizer.zero_grad(set_to_none=True)
        worker.loss_fn(model(images), labels).backward()
        worker.clip(model)
        optimizer.step()
    naive = model.state_dict()
    worst = max((naive[k] - reference[k]).abs().max().item() for k in reference
                if reference[k].is_floating_point())
    assert worst > 1e-4

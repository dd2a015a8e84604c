"""Train Mobile-Former the way its authors did: timm's parts, their hyper-parameters, and
optionally mf_kernels' fused kernels (--accelerate) and torch.compile (--compile).

The authors' command (their README; timm 0.3.4's train.py on 8 GPUs):

    python -m torch.distributed.launch --nproc_per_node=8 train.py $DATA --model mobile-former-508m
        --batch-size 128 --epochs 450 --opt adamw --sched cosine --lr 0.001 --weight-decay 0.20
        --drop 0.3 --drop-path 0.0 --mixup 0.2 --aa rand-m9-mstd0.5 --remode pixel --reprob 0.2
        --color-jitter 0.

The same here (the defaults below are that command; what it left unset is timm 0.3.4's default):

    python examples/train.py /data/imagenet --model mobile_former_508m --accelerate
    torchrun --nproc_per_node=8 examples/train.py /data/imagenet --accelerate --amp bf16
    python examples/train.py --synthetic --steps 2 --img-size 64 --batch-size 8   # a smoke run

It prints the loss every --log-interval steps, then images/s (after the first step, which
includes torch.compile's compilation), peak memory and the last loss.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import time

import numpy as np

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import timm
from timm.data import Mixup, create_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad

import mf_kernels
import mobileformer  # registers the Mobile-Former models with timm

# Classifier dropout of the authors' released training commands (spec section 18).
AUTHORS_DROP = {"508m": 0.3, "294m": 0.3, "214m": 0.2, "151m": 0.2, "96m": 0.2, "52m": 0.2,
                "26m": 0.1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="?", help="ImageNet-layout folder (with train/ or classes)")
    p.add_argument("--synthetic", action="store_true", help="random images, no data folder")
    p.add_argument("--model", default="mobile_former_508m")
    p.add_argument("--num-classes", type=int, default=1000, help="for --synthetic")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=128, help="per process (authors: 128 x 8)")
    p.add_argument("--epochs", type=int, default=450)
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: all)")
    p.add_argument("--opt", default="adamw")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.2)
    p.add_argument("--sched", default="cosine")
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--warmup-lr", type=float, default=1e-4)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--cooldown-epochs", type=int, default=10)
    p.add_argument("--drop", type=float, default=None, help="classifier dropout (authors' "
                   "per variant: 0.3 for 508M/294M ... 0.1 for 26M)")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--mixup", type=float, default=0.2)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--aa", default="rand-m9-mstd0.5")
    p.add_argument("--reprob", type=float, default=0.2)
    p.add_argument("--remode", default="pixel")
    p.add_argument("--color-jitter", type=float, default=0.0)
    p.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights")
    p.add_argument("--model-ema-decay", type=float, default=0.9998)
    p.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--accelerate", action="store_true", help="mf_kernels' fused kernels")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if not args.synthetic and not args.data:
        p.error("give a data folder or --synthetic")
    if args.drop is None:
        args.drop = AUTHORS_DROP[mobileformer.canonical_name(args.model).split("_")[1]]
    return args


def build_model(args, num_classes: int) -> torch.nn.Module:
    model = timm.create_model(args.model, num_classes=num_classes, drop_rate=args.drop,
                              drop_path_rate=args.drop_path)
    if args.accelerate:
        mf_kernels.accelerate(model)  # same parameters and state_dict, fused kernels
    return model


def build_training(model, args, num_classes: int, steps_per_epoch: int):
    """timm's optimizer (AdamW; no weight decay on biases and norms), cosine schedule with
    warmup, mixup with label smoothing and its soft-target loss, and the optional EMA."""
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr,
                                    weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        warmup_lr=args.warmup_lr, min_lr=args.min_lr, cooldown_epochs=args.cooldown_epochs,
        updates_per_epoch=steps_per_epoch)
    mixup = None
    if args.mixup > 0:
        mixup = Mixup(mixup_alpha=args.mixup, label_smoothing=args.smoothing,
                      num_classes=num_classes)
        loss_fn = SoftTargetCrossEntropy()
    else:
        loss_fn = LabelSmoothingCrossEntropy(args.smoothing)
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    return optimizer, scheduler, mixup, loss_fn, ema


def amp_dtype(args):
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]


def train_step(model, images, targets, optimizer, loss_fn, mixup, args, scaler=None):
    """One step of the recipe: mixup, forward under autocast, backward, clip, update."""
    if mixup is not None:
        images, targets = mixup(images, targets)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dtype = amp_dtype(args)
    with torch.autocast(images.device.type, dtype=dtype or torch.bfloat16,
                        enabled=dtype is not None):
        loss = loss_fn(model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16: scale the loss, unscale before clipping
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if args.clip_grad is not None:
        dispatch_clip_grad(model.parameters(), args.clip_grad, mode="norm")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


def synthetic_batches(args, num_classes: int, device, rank: int, count: int = 4):
    """A few fixed random batches (generated once, so data costs nothing), with the authors'
    random erasing applied per batch; normalised like ImageNet images."""
    gen = torch.Generator().manual_seed(args.seed + rank)
    erase = RandomErasing(args.reprob, mode=args.remode, device="cpu")
    for _ in range(count):
        images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen)
        labels = torch.randint(0, num_classes, (args.batch_size,), generator=gen)
        yield erase(images).to(device), labels.to(device)


def image_folder(args, model, rank: int, world: int, device):
    from torchvision.datasets import ImageFolder
    cfg = model.pretrained_cfg
    transform = create_transform(
        args.img_size, is_training=True, auto_augment=args.aa, re_prob=args.reprob,
        re_mode=args.remode, color_jitter=args.color_jitter, interpolation="random",
        mean=cfg["mean"], std=cfg["std"])
    root = os.path.join(args.data, "train")
    dataset = ImageFolder(root if os.path.isdir(root) else args.data, transform=transform)
    sampler = (torch.utils.data.DistributedSampler(dataset, world, rank, seed=args.seed)
               if world > 1 else torch.utils.data.RandomSampler(dataset))
    return torch.utils.data.DataLoader(
        dataset, args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; whole process


def main(argv=None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # Every source of randomness of the recipe, per process: dropout (torch), mixup's lambda
    # (numpy), random erasing and RandAugment (random).
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    random.seed(args.seed + rank)

    num_classes = args.num_classes
    if not args.synthetic:
        from torchvision.datasets import folder
        root = os.path.join(args.data, "train")
        num_classes = len(folder.find_classes(root if os.path.isdir(root) else args.data)[0])
    model = build_model(args, num_classes).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.synthetic:
        loader = list(synthetic_batches(args, num_classes, device, rank))
    else:
        loader = image_folder(args, model, rank, world, device)
    optimizer, scheduler, mixup, loss_fn, ema = build_training(model, args, num_classes,
                                                               len(loader))
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    net = DistributedDataParallel(model, [local_rank] if device.type == "cuda" else None) \
        if world > 1 else model
    if args.compile:
        net = torch.compile(net)

    step, timed_images, timed_seconds, loss_value = 0, 0, 0.0, float("nan")
    model.train()
    for epoch in range(args.epochs):
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            start = time.perf_counter()
            loss = train_step(net, images, labels, optimizer, loss_fn, mixup, args, scaler)
            if ema is not None:
                ema.update(model, step=step)
            loss_value = loss.item()  # waits for the device
            if step > 0:  # the first step includes compilation and warm-up
                timed_images += images.shape[0] * world
                timed_seconds += time.perf_counter() - start
            step += 1
            scheduler.step_update(num_updates=step)
            if rank == 0 and (step % args.log_interval == 0 or step == 1):
                print(f"epoch {epoch} step {step} loss {loss_value:.4f} "
                      f"lr {optimizer.param_groups[0]['lr']:.3g}", flush=True)
            if step == args.steps:
                break
        scheduler.step(epoch + 1)
        if step == args.steps:
            break

    result = dict(steps=step, loss=loss_value, peak_memory_mib=peak_memory_mib(device),
                  images_per_s=timed_images / timed_seconds if timed_seconds else float("nan"))
    if rank == 0:
        print(f"{args.model} {'accelerated' if args.accelerate else 'reference'}"
              f"{' compiled' if args.compile else ''} on {device.type} x{world}, "
              f"amp {args.amp}: {result['images_per_s']:.1f} images/s, "
              f"peak memory {result['peak_memory_mib']:.0f} MiB "
              f"({'allocated' if device.type == 'cuda' else 'RSS'}), "
              f"last loss {result['loss']:.4f}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()

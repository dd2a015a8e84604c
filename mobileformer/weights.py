"""Loading the authors' checkpoints, and the spec's deterministic weights (section 20.2)."""
from __future__ import annotations

import math
import os
import zlib
from typing import Dict, Iterable, List, Mapping, Sequence, Union

import torch
from torch import Tensor, nn

StateDict = Mapping[str, Tensor]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model: lists every missing, unexpected and misshaped key."""


def _unwrap(checkpoint) -> Dict[str, Tensor]:
    # Training scripts commonly nest the weights and prefix them with "module." (DataParallel).
    for field in ("state_dict", "model", "state_dict_ema"):
        if isinstance(checkpoint, Mapping) and field in checkpoint and isinstance(
                checkpoint[field], Mapping):
            checkpoint = checkpoint[field]
            break
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"state_dict_or_path: expected a state dict or a path to one, "
                        f"got {type(checkpoint).__name__}")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return dict(checkpoint)


def load_official(model: nn.Module, state_dict_or_path: Union[StateDict, str, os.PathLike],
                  skip: Sequence[str] = ()):
    """Load the authors' checkpoint (their key names) into ``model``, strictly.

    Every key of the checkpoint must be used and every parameter and buffer of the model filled,
    with equal shapes; otherwise one :class:`CheckpointMismatchError` lists the missing keys, the
    unexpected keys and the shape mismatches. Returns ``model``.

    ``skip``: key prefixes left out on both sides (neither loaded nor required), e.g.
    ``("classifier.classifier.1.",)`` to keep the model's own classifier when fine-tuning on
    another number of classes.
    """
    source = state_dict_or_path
    if isinstance(source, (str, os.PathLike)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(skip, str):
        raise TypeError("skip: expected a sequence of key prefixes, got one str")
    state = {k: v for k, v in _unwrap(source).items() if not k.startswith(tuple(skip))}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(skip))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint does not fit {type(model).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", misshaped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {k}" for k in keys)
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(state, strict=not skip)
    return model


def init_weights(model: nn.Module) -> nn.Module:
    """The authors' initialisation for training from scratch (spec section 18), in place.

    Convolutions N(0, 2 / (k_h k_w C_out)) (fan-out), bias 0; BatchNorm2d weight 1, bias 0;
    every Linear N(0, 0.01^2), bias 0. LayerNorm, BatchNorm1d and the tokens keep PyTorch's
    defaults (1, 0 and N(0, 1)), as in the authors' code. Every dynamic ReLU then starts as a
    plain ReLU (a1 ~ 1, a2 ~ 0) and every Mobile->Former gate at ~1. Returns ``model``.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.01)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def deterministic_tensor(key: str, shape: Sequence[int], dtype: str) -> Tensor:
    """The spec's deterministic weight for one manifest entry (seeded by CRC-32 of the key)."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        value = torch.zeros(shape, dtype=torch.float64)
    elif key.endswith("running_var"):
        value = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
    elif len(shape) <= 1:
        base = 1.0 if key.endswith("weight") else 0.0
        value = base + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    else:
        fan_in = math.prod(shape[1:])
        value = torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
    return value.to(getattr(torch, dtype))


def deterministic_state_dict(entries: Iterable[Sequence]) -> Dict[str, Tensor]:
    """Build the whole state dict from a manifest's ``state_dict`` list of [key, shape, dtype]."""
    return {key: deterministic_tensor(key, shape, dtype) for key, shape, dtype in entries}


def num_params(model: nn.Module) -> int:
    """Trainable parameters (the tokens included, BN running statistics not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__: List[str] = ["CheckpointMismatchError", "load_official", "init_weights",
                      "deterministic_tensor", "deterministic_state_dict", "num_params"]

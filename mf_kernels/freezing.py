"""freeze(model): the fastest inference path. Inference only.

On the CPU in float32, a frozen :class:`mobileformer.MobileFormer` runs as one call,
``torch.ops.mf_kernels.frozen_mobileformer`` (``csrc/cpu/frozen/``): its own NHWC kernels for
every convolution (pointwise ones as GEMMs with bias, activation, residual and shuffle fused
into the store; depthwise ones with their bias and activation), the token work of each block
as a few small GEMMs and loops, workspaces allocated once per input size, and the instruction
set (AVX-512, AVX2 or the baseline) chosen at run time (``mf_kernels.cpu_isa()``). The weights
are copied into that path's packed layout when the model is frozen (``frozen_plan.py``).

Everywhere else (other dtypes, other devices, ``forward_features``, a model that is not a whole
MobileFormer) the frozen model runs block by block, which is still faster than the reference:

* every BatchNorm is folded into the convolution or Linear before it:
  W' = W * gamma / sqrt(var + eps),  b' = (b - mean) * gamma / sqrt(var + eps) + beta;
* each Mobile-Former block computes all its token work (Mobile->Former, Former, both
  hyper-MLPs, the Former->Mobile keys and values) in one call, ``mf_kernels::block_tokens``;
  its mobile path is then three convolutions, two fused dynamic ReLUs and one fused
  Former->Mobile attention;
* the weights are put in channels_last (``memory_format``), so every feature map after the
  stem is channels_last: on the CPU at batch 1, oneDNN's depthwise convolutions are up to 3x
  faster that way, and the fused kernels take channels_last natively. Inputs may come in
  either layout.

A frozen model reproduces the reference's eval-mode logits (tested at 1e-5 relative in fp32),
but it is for inference only: BatchNorm statistics are baked in, its state_dict no longer has the
authors' keys, calling it in training mode raises, and changing its parameters afterwards is not
seen by the packed copy (freeze again instead). Freeze a copy if you still need to train or save
the original.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

import mobileformer

from . import _extension, backends, frozen_plan
from .patching import accelerate


def _fold_batch_norm(layer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold an eval-mode ``norm`` into the Conv2d or Linear ``layer`` that feeds it."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        layer.weight.mul_(scale.reshape(shape))
        layer.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """Fold every (Conv2d | Linear, BatchNorm) pair and drop the identities left behind."""
    layers: List[nn.Module] = []
    for layer in seq:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layers and isinstance(
                layers[-1], (nn.Conv2d, nn.Linear)):
            _fold_batch_norm(layers[-1], layer)
        elif not isinstance(layer, nn.Identity):
            layers.append(layer)
    return nn.Sequential(*layers)


def _token_weights(block: nn.Module) -> List[Tensor]:
    """The 32 weights of ``mf_kernels::block_tokens``, in its order (csrc/composite)."""
    m2f, former, f2m = block.local_global, block.global_block, block.global_local
    second = block.hyper2 if hasattr(block, "hyper2") else block.hyper3
    linears = [m2f.q, m2f.alpha[0], m2f.proj, m2f.layer_norm,
               former.q, former.channel_mlp, former.layer_norm, former.ffn[0], former.ffn[2],
               former.ffn_norm, block.hyper1.hyper[0], block.hyper1.hyper[2],
               second.hyper[0], second.hyper[2], f2m.k, f2m.proj]
    return [t for layer in linears for t in (layer.weight, layer.bias)]


def _check_inference(module: nn.Module) -> None:
    if module.training:
        raise RuntimeError("this Mobile-Former was frozen by mf_kernels.freeze and is for "
                           "inference only; call .eval() (or freeze a copy to keep training)")


class _Frozen:
    """Shared by the frozen block classes: the one-call token path."""

    def _tokens(self, x: Tensor, z: Tensor):
        _check_inference(self)
        backends.note_direct_use("cuda", x.device)  # the extension's kernels, whatever auto says
        return torch.ops.mf_kernels.block_tokens(x, z, self._frozen_weights,
                                                 self.local_global.heads, self.global_block.heads)


class FrozenMobileFormerBlock(_Frozen, mobileformer.MobileFormerBlock):
    def forward(self, x: Tensor, z: Tensor):
        z, slope1, slope2, k, v = self._tokens(x, z)
        y = torch.ops.mf_kernels.dynamic_relu(self.conv1(x), slope1, None)
        y = self.conv3(torch.ops.mf_kernels.dynamic_relu(self.conv2(y), slope2, None))
        if self.use_skip:
            y = y + x
        return torch.ops.mf_kernels.f2m_attention(y, k, v, self.global_local.heads), z


class FrozenMobileFormerDownBlock(_Frozen, mobileformer.MobileFormerDownBlock):
    def forward(self, x: Tensor, z: Tensor):
        z, slope1, slope3, k, v = self._tokens(x, z)
        r = self.conv2(torch.ops.mf_kernels.dynamic_relu(self.conv1(x), slope1, None))
        y = self.conv4(torch.ops.mf_kernels.dynamic_relu(self.conv3(r), slope3, None)) + r
        return torch.ops.mf_kernels.f2m_attention(y, k, v, self.global_local.heads), z


class FrozenMobileFormer(mobileformer.MobileFormer):
    """A frozen whole network: float32 CPU images run through ``frozen_mobileformer``."""

    def _engine_applies(self, x: Tensor) -> bool:
        weight = self.tokens.weight
        return (self._engine is not None and x.device.type == "cpu" and weight.device.type == "cpu"
                and x.dtype == torch.float32 and weight.dtype == torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        _check_inference(self)
        dtype = self.tokens.weight.dtype
        if x.dtype != dtype:
            raise TypeError(f"x: expected {dtype} images, the dtype of this frozen model, got "
                            f"{x.dtype} (the fast CPU path runs float32 models; convert the "
                            "model before freezing it)")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        if self._engine_applies(x):
            weights, config = self._engine
            return torch.ops.mf_kernels.frozen_mobileformer(x, weights, config)
        return super().forward(x)


_FROZEN = {mobileformer.MobileFormerBlock: FrozenMobileFormerBlock,
           mobileformer.MobileFormerDownBlock: FrozenMobileFormerDownBlock}


@torch.no_grad()
def freeze(model: nn.Module, memory_format: torch.memory_format = torch.channels_last
           ) -> nn.Module:
    """Prepare ``model`` (a Mobile-Former, or any model of its modules) for fast inference,
    in place, and return it in eval mode. See the module docstring for what changes;
    ``memory_format=torch.contiguous_format`` keeps the feature maps in NCHW."""
    if not _extension.LOADED:
        raise RuntimeError(f"mf_kernels.freeze needs the C++ extension: {_extension.LOAD_ERROR}")
    model.eval()
    accelerate(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Sequential) and any(
                    isinstance(m, nn.modules.batchnorm._BatchNorm) for m in child):
                setattr(parent, name, _fold_sequential(child))
    for module in model.modules():
        frozen = _FROZEN.get(type(module))
        if frozen is not None:
            module.__class__ = frozen
            module._frozen_weights = _token_weights(module)
    for param in model.parameters():
        param.requires_grad_(False)
    model = model.to(memory_format=memory_format)
    if isinstance(model, mobileformer.MobileFormer):
        model.__class__ = FrozenMobileFormer
        weight = model.tokens.weight
        cpu_float = weight.device.type == "cpu" and weight.dtype == torch.float32
        model._engine = frozen_plan.build(model) if cpu_float else None
    return model

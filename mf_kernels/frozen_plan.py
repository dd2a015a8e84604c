"""The inputs of ``mf_kernels::frozen_mobileformer``: a BN-folded Mobile-Former as one list of
packed weights and one list of integers (the format is documented in
``csrc/cpu/frozen/plan.cpp``; ``FORMAT_VERSION`` matches its ``kFormatVersion``).

What the engine expects, and why the weights are rearranged here rather than at run time:

* GEMM weights ``W[K, N]`` (a pointwise convolution's ``[C_out, C_in]`` transposed, a Linear's
  ``[out, in]`` transposed) are packed into panels of 32 columns, zero padded: each micro-kernel
  step then reads one contiguous row of a panel. Grouped convolutions pack each group's matrix.
* Depthwise weights are tap-major, ``[9, C]``, so one vector load covers a run of channels.
* A depthwise convolution with a channel multiplier ``e`` produces its outputs multiple-major
  (channel ``j * C_in + i`` is the ``j``-th output of input channel ``i``; the reference orders
  them ``i * e + j``): the engine then runs ``e`` plain depthwise convolutions over the same
  input. Whatever reads those channels (the dynamic ReLU's slopes, i.e. the rows of the
  hyper-MLP's last Linear, and the next pointwise convolution's inputs) is permuted to match.
  MF-26M's shuffle after such a convolution is exactly that reordering, so there nothing is
  permuted.
* MF-26M's channel shuffle after a grouped pointwise convolution is folded into the GEMM's
  stores (a column map); the dynamic ReLU that follows in the stride-1 block reads the GEMM's
  columns, so its slopes are permuted back.
* Linears that read the same input are concatenated into one GEMM: the Mobile->Former query
  and gate, both hyper-MLPs' first layers, the Former->Mobile keys and values.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

import mobileformer
from mobileformer.layers import ChannelShuffle

FORMAT_VERSION = 1
PANEL = 32  # columns per packed panel (csrc/cpu/frozen/kernels.h, kPanel)
KIND = {"lite": 0, "s1": 1, "down": 2}


def pack(w_kn: Tensor) -> Tensor:
    """``[K, N]`` -> ``ceil(N / 32)`` panels of ``[K, 32]``, zero padded, flattened."""
    k, n = w_kn.shape
    padded = torch.zeros(k, (n + PANEL - 1) // PANEL * PANEL, dtype=torch.float32)
    padded[:, :n] = w_kn
    return padded.reshape(k, -1, PANEL).transpose(0, 1).contiguous().reshape(-1)


def pack_linear(layer: nn.Linear) -> List[Tensor]:
    return [pack(layer.weight.t()), layer.bias.reshape(-1)]


def pack_linears(*layers: nn.Linear) -> List[Tensor]:
    """Linears reading the same input, side by side as one [in, sum(out)] GEMM."""
    weight = torch.cat([layer.weight for layer in layers], dim=0)
    bias = torch.cat([layer.bias for layer in layers], dim=0)
    return [pack(weight.t()), bias]


def pack_pointwise(conv: nn.Conv2d, input_order: Tensor = None) -> List[Tensor]:
    """A 1x1 convolution as ``groups`` packed GEMM weights, its inputs optionally permuted."""
    w = conv.weight[:, :, 0, 0]
    if input_order is not None:
        assert conv.groups == 1, "input permutations apply to ungrouped convolutions only"
        w = w[:, input_order]
    out_per_group = conv.out_channels // conv.groups
    packed = [pack(w[g * out_per_group:(g + 1) * out_per_group].t()) for g in range(conv.groups)]
    return [torch.cat(packed), conv.bias.reshape(-1)]


def multiplier_order(channels: int, mult: int) -> Tensor:
    """Reference channel of each engine channel of a depthwise conv with a channel multiplier:
    engine ``j * channels + i`` is reference ``i * mult + j``."""
    return torch.arange(channels * mult).reshape(channels, mult).t().reshape(-1)


def shuffle_source(shuffle: ChannelShuffle, channels: int) -> Tensor:
    """``src[k]``: the input channel that a ChannelShuffle moves to channel ``k``."""
    return torch.arange(channels).reshape(shuffle.groups, -1).t().reshape(-1)


def pack_depthwise(conv: nn.Conv2d, order: Tensor) -> List[Tensor]:
    """``mult`` tap-major ``[9, C_in]`` weights, output channels in engine ``order``."""
    mult = conv.out_channels // conv.in_channels
    w = conv.weight.reshape(conv.out_channels, 9)[order]
    w = w.reshape(mult, conv.in_channels, 9).transpose(1, 2).contiguous()
    return [w.reshape(-1), conv.bias[order].contiguous()]


def permute_slopes(hyper: nn.Module, order: Tensor) -> List[Tensor]:
    """The hyper-MLP's last Linear with both halves (a1 rows, a2 rows) permuted by ``order``."""
    last = hyper.hyper[2]
    n = last.out_features // 2
    rows = torch.cat([order, order + n])
    return [pack(last.weight[rows].t()), last.bias[rows].contiguous()]


def _split(seq: nn.Sequential) -> Tuple[nn.Conv2d, ChannelShuffle]:
    """A folded conv_bn: (conv, the shuffle after it or None)."""
    conv = seq[0]
    shuffle = next((m for m in seq if isinstance(m, ChannelShuffle)), None)
    return conv, shuffle


def _norm(norm: nn.LayerNorm) -> List[Tensor]:
    return [norm.weight, norm.bias]


def _mobile2former(m2f: nn.Module) -> List[Tensor]:
    return (pack_linears(m2f.q, m2f.alpha[0]) + pack_linear(m2f.proj) + _norm(m2f.layer_norm))


def _tokens(block: nn.Module, slopes1: List[Tensor], slopes2: List[Tensor]) -> List[Tensor]:
    former, f2m = block.global_block, block.global_local
    second = block.hyper2 if hasattr(block, "hyper2") else block.hyper3
    return (_mobile2former(block.local_global)
            + pack_linear(former.q) + pack_linear(former.channel_mlp) + _norm(former.layer_norm)
            + pack_linear(former.ffn[0]) + pack_linear(former.ffn[2]) + _norm(former.ffn_norm)
            + pack_linears(block.hyper1.hyper[0], second.hyper[0])
            + slopes1 + slopes2 + pack_linears(f2m.k, f2m.proj))


def _identity(n: int) -> Tensor:
    return torch.arange(n)


def _lite(block: mobileformer.BneckLite) -> Tuple[List[int], List[Tensor]]:
    layers = list(block.conv)
    dw, pw = layers[0], layers[-1]
    shuffled = any(isinstance(m, ChannelShuffle) for m in layers)
    mult = dw.out_channels // dw.in_channels
    order = multiplier_order(dw.in_channels, mult)
    weights = pack_depthwise(dw, order) + pack_pointwise(pw, None if shuffled else order)
    ints = [KIND["lite"], dw.in_channels, pw.out_channels, int(block.use_skip), 0, 0, mult,
            dw.stride[0], 0, 0, pw.groups, 0, 0, 0]
    return ints, weights


def _stride1(block: mobileformer.MobileFormerBlock) -> Tuple[List[int], List[Tensor]]:
    pw1, shuffle1 = _split(block.conv1)
    dw, _ = _split(block.conv2)
    pw2, shuffle3 = _split(block.conv3)
    n = pw1.out_channels
    # Slopes of the dynamic ReLU right after pw1 are read per GEMM column (before the shuffle).
    slope_order = (torch.argsort(shuffle_source(shuffle1, n)) if shuffle1 is not None
                   else _identity(n))
    slopes1 = permute_slopes(block.hyper1, slope_order)
    slopes2 = permute_slopes(block.hyper2, _identity(n))
    weights = _tokens(block, slopes1, slopes2) + pack_pointwise(pw1)
    if shuffle1 is not None:
        weights.append(torch.argsort(shuffle_source(shuffle1, n)).to(torch.int32))
    weights += pack_depthwise(dw, _identity(n)) + pack_pointwise(pw2)
    if shuffle3 is not None:
        weights.append(torch.argsort(shuffle_source(shuffle3, pw2.out_channels)).to(torch.int32))
    ints = [KIND["s1"], pw1.in_channels, pw2.out_channels, int(block.use_skip),
            block.local_global.heads, block.global_block.heads, 1, 1, 1, n, pw1.groups,
            int(shuffle1 is not None), pw2.groups, int(shuffle3 is not None)]
    return ints, weights


def _down(block: mobileformer.MobileFormerDownBlock) -> Tuple[List[int], List[Tensor]]:
    dw1, shuffle1 = _split(block.conv1)
    pw1, _ = _split(block.conv2)
    dw2, shuffle2 = _split(block.conv3)
    pw2, _ = _split(block.conv4)
    mult1, mult2 = dw1.out_channels // dw1.in_channels, dw2.out_channels // dw2.in_channels
    order1 = multiplier_order(dw1.in_channels, mult1)
    order2 = multiplier_order(dw2.in_channels, mult2)
    # After a shuffle the reference's own order is the engine's: nothing downstream moves.
    read1 = _identity(dw1.out_channels) if shuffle1 is not None else order1
    read2 = _identity(dw2.out_channels) if shuffle2 is not None else order2
    slopes1 = permute_slopes(block.hyper1, read1)
    slopes2 = permute_slopes(block.hyper3, read2)
    weights = (_tokens(block, slopes1, slopes2) + pack_depthwise(dw1, order1)
               + pack_pointwise(pw1, None if shuffle1 is not None else order1)
               + pack_depthwise(dw2, order2)
               + pack_pointwise(pw2, None if shuffle2 is not None else order2))
    ints = [KIND["down"], dw1.in_channels, pw2.out_channels, 0, block.local_global.heads,
            block.global_block.heads, mult1, dw1.stride[0], mult2, 0, pw1.groups, 0,
            pw2.groups, 0]
    return ints, weights


def _head(model: mobileformer.MobileFormer) -> Tuple[List[int], List[Tensor]]:
    head = model.classifier
    layers = list(head.conv)
    conv = next(m for m in layers if isinstance(m, nn.Conv2d))
    shuffle = next((m for m in layers if isinstance(m, ChannelShuffle)), None)
    fc1, fc2 = head.fc[0], head.classifier[-1]
    weights = _mobile2former(model.local_global)
    if shuffle is not None:
        weights.append(shuffle_source(shuffle, conv.in_channels).to(torch.int32))
    weights += pack_pointwise(conv) + pack_linear(fc1) + pack_linear(fc2)
    ints = [model.local_global.heads, int(shuffle is not None), conv.out_channels, conv.groups,
            fc1.out_features]
    return ints, weights


def build(model: mobileformer.MobileFormer) -> Tuple[List[Tensor], List[int]]:
    """(weights, config) of a Mobile-Former whose BatchNorms are folded (freezing.py)."""
    with torch.no_grad():
        config = [FORMAT_VERSION, model.config.num_tokens, model.config.token_dim,
                  model.classifier.classifier[-1].out_features, len(model.features),
                  model.stem[0].out_channels]
        weights = [model.tokens.weight]
        stem = model.stem[0].weight.permute(2, 3, 1, 0).reshape(27, -1)
        weights += [pack(stem), model.stem[0].bias]
        for block in model.features:
            if isinstance(block, mobileformer.BneckLite):
                ints, w = _lite(block)
            elif isinstance(block, mobileformer.MobileFormerDownBlock):
                ints, w = _down(block)
            else:
                ints, w = _stride1(block)
            config += ints
            weights += w
        ints, w = _head(model)
        config += ints
        weights += w
        weights = [t.detach().to(torch.float32).contiguous() if t.is_floating_point()
                   else t.contiguous() for t in weights]
    return weights, config

"""Exact parameter and MAC counts of an HRViT config from its fields alone: no model, no forward pass.

A search screens thousands of candidates per measured trial, so the counts must cost microseconds,
not the ~1 s of building a model and tracing it with fvcore. The formulas mirror ``hrvit_space``'s
layers one by one and follow ``profiling.counting``'s convention (MACs of convolutions, linear layers,
matmuls and attention; FLOPs = 2 x MACs; the same component/branch breakdown); a test checks them
equal to the traced counts, so a change to a layer that is not mirrored here fails CI.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from hrvit_space import STEM_WIDTH, ArchConfig, branch_feature_size, mlp_hidden

SHARED = "shared"  # profiling.counting.SHARED_BRANCH


@dataclass(frozen=True)
class AnalyticCounts:
    """The counts ``profile()`` traces, for one forward pass of ``batch`` images."""

    params: int
    params_by_component: dict[str, int]
    params_by_branch: dict[str, int]
    macs: int
    macs_by_component: dict[str, int]
    macs_by_branch: dict[str, int]

    @property
    def flops(self) -> int:
        return 2 * self.macs


class _Tally:
    """Params and MACs summed per component and per branch (for one image) as they are counted."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, int]] = {name: {} for name in ("params_component", "params_branch", "macs_component", "macs_branch")}

    def add(self, component: str, branch: int | None, params: int = 0, macs: int = 0, times: int = 1) -> None:
        key = SHARED if branch is None else str(branch)
        for kind, value in (("params", params * times), ("macs", macs * times)):
            if value:
                by_component, by_branch = self.sums[kind + "_component"], self.sums[kind + "_branch"]
                by_component[component] = by_component.get(component, 0) + value
                by_branch[key] = by_branch.get(key, 0) + value

    def copy(self) -> "_Tally":
        twin = _Tally()
        twin.sums = {name: dict(sums) for name, sums in self.sums.items()}
        return twin


def _conv(c_in: int, c_out: int, kernel: int, out_pixels: int, groups: int = 1, bias: bool = True) -> tuple[int, int]:
    weights = c_out * (c_in // groups) * kernel * kernel
    return weights + (c_out if bias else 0), weights * out_pixels


def _conv_bn(c_in: int, c_out: int, kernel: int, out_pixels: int, groups: int = 1, bias: bool = True) -> tuple[int, int]:
    params, macs = _conv(c_in, c_out, kernel, out_pixels, groups, bias)
    return params + 2 * c_out, macs


def _linear(c_in: int, c_out: int, tokens: int) -> tuple[int, int]:
    return c_in * c_out + c_out, c_in * c_out * tokens


def _strip_attention_macs(height: int, width: int, window: int, channels: int) -> int:
    """Q.K^T and A.V over strips of ``window`` rows (padded to a multiple, as ``strip_attention`` does)."""
    strips = math.ceil(height / window)
    length = window * width
    return strips * length * length * 2 * channels


def _blocks(t: _Tally, b: int, depth: int, dim: int, window: int, hidden: int, size: tuple[int, int]) -> None:
    """``depth`` identical HRViT blocks of branch ``b``."""
    for component, params, macs in _block_terms(dim, window, hidden, size):
        t.add(component, b, params=params, macs=macs, times=depth)


@functools.lru_cache(maxsize=4096)
def _block_terms(dim: int, window: int, hidden: int, size: tuple[int, int]) -> tuple[tuple[str, int, int], ...]:
    """(component, params, MACs) of one HRViT block; cached, since a screened pool repeats the same blocks."""
    h, w = size
    tokens = h * w
    half = dim // 2
    qv = _linear(dim, 2 * dim, tokens)
    local = _conv(dim, dim, 3, tokens, groups=dim)
    proj = _linear(dim, dim, tokens)
    attention = _strip_attention_macs(h, w, window, half) + _strip_attention_macs(w, h, window, half)
    exponent = int(math.log2(dim))
    p = 2 ** (exponent - exponent // 2)
    k = dim // p
    fc1, fc2 = _linear(dim, hidden, tokens), _linear(hidden, dim, tokens)
    mid = hidden // 2
    convs = mid * 9 + mid + mid * 25 + mid  # 3x3 and 5x5 depthwise halves
    return (
        ("norm", 4 * dim, 0),  # attn_norm and mlp_norm
        ("attention", qv[0] + local[0] + proj[0] + 2 * dim, qv[1] + local[1] + proj[1] + attention),
        ("des", p * p + p + k * k + k, tokens * dim * (p + k)),
        ("mixcfn", fc1[0] + fc2[0] + convs, fc1[1] + fc2[1] + tokens * hidden * 25),  # one 5x5 conv
    )


def _fusion(t: _Tally, sizes: list[tuple[int, int]], c_in: tuple[int, ...], c_out: tuple[int, ...]) -> None:
    for i, out in enumerate(c_out):
        target = sizes[i]
        for j, source_channels in enumerate(c_in):
            if j < i:
                factor = 2 ** (i - j)
                pixels = target[0] * target[1]
                dw = _conv_bn(source_channels, source_channels, factor + 1, pixels, groups=source_channels, bias=False)
                pw = _conv_bn(source_channels, out, 1, pixels)
                t.add("fusion", i, params=dw[0] + pw[0], macs=dw[1] + pw[1])
            elif j > i:
                source = sizes[j]
                params, macs = _conv_bn(source_channels, out, 1, source[0] * source[1])
                t.add("fusion", i, params=params, macs=macs)


def _head(t: _Tally, head, channels: tuple[int, ...], sizes: list[tuple[int, int]]) -> None:
    pixels = [h * w for h, w in sizes]
    if head.kind == "segformer":
        for c, n in zip(channels, pixels):
            t.add("head", None, *_conv(c, head.width, 1, n))
        t.add("head", None, *_conv_bn(head.width * len(channels), head.width, 1, pixels[0], bias=False))
        t.add("head", None, *_conv(head.width, head.num_classes, 1, pixels[0]))
    elif head.kind == "classification":
        planes = [32 * 2**b for b in range(len(channels))]
        widths = [4 * p for p in planes]
        for c, p, n in zip(channels, planes, pixels):
            for layer in (_conv_bn(c, p, 1, n, bias=False), _conv_bn(p, p, 3, n, bias=False), _conv_bn(p, 4 * p, 1, n, bias=False)):
                t.add("head", None, *layer)
            if c != 4 * p:
                t.add("head", None, *_conv_bn(c, 4 * p, 1, n, bias=False))
        for b in range(len(channels) - 1):
            t.add("head", None, *_conv_bn(widths[b], widths[b + 1], 3, pixels[b + 1]))
        t.add("head", None, *_conv_bn(widths[-1], 2048, 1, pixels[-1]))
        t.add("head", None, *_linear(2048, head.num_classes, 1))


@functools.lru_cache(maxsize=256)
def _skeleton(in_chans: int, input_size: tuple[int, int], channels: tuple[int, ...], branches: tuple[int, ...], head) -> _Tally:
    """Everything but the HRViT blocks (stem, fusion, patch embeddings, norms, head): the same for every
    member of a space with fixed channels, so it is counted once (screening pools: 4x fewer terms each)."""
    t = _Tally()
    half_size = tuple(math.ceil(s / 2) for s in input_size)
    stem1 = _conv_bn(in_chans, STEM_WIDTH // 2, 3, half_size[0] * half_size[1])
    sizes = [branch_feature_size(input_size, b) for b in range(len(channels))]
    h0, w0 = sizes[0]
    stem2 = _conv_bn(STEM_WIDTH // 2, STEM_WIDTH, 3, h0 * w0)
    t.add("stem", None, params=stem1[0] + stem2[0], macs=stem1[1] + stem2[1])
    in_channels: tuple[int, ...] = (STEM_WIDTH,)
    for n in branches:
        fused = in_channels + tuple(channels[len(in_channels):n])
        _fusion(t, sizes, in_channels, fused)
        for b in range(n):
            dim, size = channels[b], sizes[b]
            pixels = size[0] * size[1]
            pw, dw = _conv(fused[b], dim, 1, pixels), _conv(dim, dim, 3, pixels, groups=dim)
            t.add("patch_embed", b, params=pw[0] + dw[0] + 2 * dim, macs=pw[1] + dw[1])
            t.add("norm", b, params=2 * dim)
        in_channels = channels[:n]
    _head(t, head, channels, sizes)
    return t


def analytic_counts(config: ArchConfig, input_size: tuple[int, int] | None = None, batch: int = 1) -> AnalyticCounts:
    """Parameters and MACs of ``config`` at ``input_size`` (default: the config's), equal to ``profile()``'s."""
    if input_size is not None and tuple(input_size) != config.input_size:
        config = config.replace(input_size=tuple(input_size))
    branches = tuple(len(depths) for depths in config.depths)
    t = _skeleton(config.in_chans, config.input_size, config.channels, branches, config.head).copy()
    sizes = [branch_feature_size(config.input_size, b) for b in range(config.num_branches)]
    for depths in config.depths:
        for b, depth in enumerate(depths):
            if depth:
                _blocks(t, b, depth, config.channels[b], config.window_sizes[b], mlp_hidden(config, b), sizes[b])
    sums = t.sums
    macs_component = {name: macs * batch for name, macs in sums["macs_component"].items()}
    return AnalyticCounts(
        params=sum(sums["params_component"].values()),
        params_by_component=sums["params_component"],
        params_by_branch=sums["params_branch"],
        macs=sum(macs_component.values()),
        macs_by_component=macs_component,
        macs_by_branch={key: macs * batch for key, macs in sums["macs_branch"].items()},
    )

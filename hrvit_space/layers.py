"""Small building blocks of HRViT.

Layout convention: inside a branch, token maps are kept channels-last ``(B, H, W, C)`` so LayerNorm
and Linear layers run on them without transposes; convolutions see the same memory as a
channels-last ``(B, C, H, W)`` view (``x.permute(0, 3, 1, 2)`` is free).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.weak import WeakIdKeyDictionary

from hrvit_space.config import ConfigError
from hrvit_space.kernels import run_fastest


def to_nchw(x: Tensor) -> Tensor:
    """(B, H, W, C) -> (B, C, H, W) view in channels-last memory (no copy)."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W, C); free when ``x`` is channels-last in memory."""
    return x.permute(0, 2, 3, 1)


def gelu_nchw(x: Tensor) -> Tensor:
    """GELU of a channels-last (B, C, H, W) map, run on its (B, H, W, C) view: torch's CPU GELU is
    ~3x slower on channels-last strides than on the same memory seen as a contiguous tensor."""
    return to_nchw(F.gelu(to_nhwc(x)))


# PyTorch runs nn.Linear, and a 1x1 convolution of one image on one thread, through BLAS sgemm; oneDNN's
# convolution computes the same 1x1 map. Which is faster at HRViT's shapes depends on the host (oneDNN
# 1.9-3.6x faster on one EPYC VM, sgemm up to 1.25x on another: ``hrvit_space.kernels``), so each shape gets
# the one measured faster.
# (A 1x1 conv with dilation 2 also reaches oneDNN, but its kernel for dilated convs took 3-12x longer on
# maps of 16x16 and below: 7x7x384->1152 3.5 vs 0.8 ms.) Traces (fvcore counts, ONNX, TorchScript) keep the plain ops.


def traced() -> bool:
    """Inside ``torch.jit.trace`` (fvcore, ONNX, TorchScript), ``torch.compile``, a dispatch mode
    (``FlopCounterMode``, fake tensors) or a torch-function mode (the zero-cost estimator's activation
    recorder): emit the plain ops, whose counts and activations are the architecture's."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None
            or torch._C._is_torch_function_mode_enabled())


def _tunable(x: Tensor) -> bool:
    return (x.dim() == 4 and x.dtype == torch.float32 and x.is_cpu and torch.backends.mkldnn.enabled
            and not traced())


# oneDNN's convolution with a fused activation (what inductor emits on CPU); absent in builds without oneDNN.
_FUSED_CONV = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _onednn_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.mkldnn_convolution(x, weight if weight.dim() == 4 else weight[:, :, None, None], bias, (0, 0), (1, 1), (1, 1), 1)


def _blas_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The 1x1 conv of a (B, C, H, W) map as ``F.linear`` on its (B, H, W, C) view (channels-last out)."""
    return to_nchw(F.linear(to_nhwc(x), weight if weight.dim() == 2 else weight.flatten(1), bias))


# oneDNN's matmul on a weight reordered once into its blocked layout (what inductor's CPU freezing emits):
# sgemm and the 1x1 conv repack the weight on every call. On one AVX-512 EPYC thread (2026-12-04) it ran
# HRViT's token linears 3-17% faster than sgemm (196x240->720 0.63 vs 0.69 ms, 49x384->1152 0.41 vs 0.50 ms),
# b2 at 224x224 10 ms (6%) faster per forward. Absent in builds without oneDNN.
_PACKED_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
_packed_linear_weights: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> ((storage, version), {rows: packed})


def onednn_packed_weight(weight: Tensor, rows: int) -> Tensor:
    """oneDNN's blocked copy of a linear or 1x1-conv ``weight`` for inputs of ``rows`` tokens.

    Reordering costs a third of a GEMM, so the copy is kept while ``weight`` lives, keyed by its storage and
    version (in-place updates such as ``optimizer.step`` or ``load_state_dict`` make a new one). Inference
    tensors have no version, so their copies are never reused: ``PackedWeights`` builds its weights as
    normal tensors for that reason.
    """
    matrix = weight if weight.dim() == 2 else weight.flatten(1)
    if weight.is_inference():
        return torch.ops.mkldnn._reorder_linear_weight(matrix, rows)
    state = (weight.data_ptr(), weight._version)
    cached = _packed_linear_weights.get(weight)
    if cached is None or cached[0] != state:
        cached = _packed_linear_weights[weight] = (state, {})
    copies = cached[1]
    if rows not in copies:
        copies[rows] = torch.ops.mkldnn._reorder_linear_weight(matrix, rows)
    return copies[rows]


def _packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return _PACKED_LINEAR(x, onednn_packed_weight(weight, x.shape[:-1].numel()), bias, "none", [], "")


def _packed_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return to_nchw(_packed_linear(to_nhwc(x), weight, bias))


def _with_packed(kernels: dict, packed: Callable[..., Tensor]) -> dict:
    """``kernels`` plus oneDNN's packed matmul, used only without autograd (it keeps no graph to the weight)."""
    return kernels if _PACKED_LINEAR is None else {**kernels, "onednn-packed": packed}


_POINTWISE_KERNELS = {"blas": _blas_pointwise, "onednn": _onednn_pointwise}
_POINTWISE_INFERENCE_KERNELS = _with_packed(_POINTWISE_KERNELS, _packed_pointwise)


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """1x1 convolution of a (B, C, H, W) map; ``weight`` is (C_out, C_in, 1, 1) or (C_out, C_in)."""
    if _tunable(x):
        kernels = _POINTWISE_KERNELS if torch.is_grad_enabled() else _POINTWISE_INFERENCE_KERNELS
        return run_fastest(("pointwise", x.shape, x.stride(), weight.shape[0]), kernels, x, weight, bias)
    return F.conv2d(x, weight if weight.dim() == 4 else weight[:, :, None, None], bias)


def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return to_nhwc(_onednn_pointwise(to_nchw(x), weight, bias))


_LINEAR_KERNELS = {"blas": F.linear, "onednn": _onednn_linear}
_LINEAR_INFERENCE_KERNELS = _with_packed(_LINEAR_KERNELS, _packed_linear)


def token_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` over the channels of (B, H, W, C) tokens, or the same map as oneDNN's 1x1 conv of
    their channels-last view where that was measured faster (``pointwise_conv``)."""
    if _tunable(x):
        kernels = _LINEAR_KERNELS if torch.is_grad_enabled() else _LINEAR_INFERENCE_KERNELS
        return run_fastest(("linear", x.shape, x.stride(), weight.shape[0]), kernels, x, weight, bias)
    return F.linear(x, weight, bias)


class PackedWeights(nn.Module):
    """A module whose forward runs on weights derived from its parameters (``_pack``).

    Outside autograd they are built once and reused until a parameter or buffer changes (in-place updates bump
    ``_version``; ``.to()`` and friends go through ``_apply``); under autograd they are built on every
    call so gradients reach the parameters; traces record the building; inference tensors have no version.
    """

    _packed: tuple[tuple, tuple[Tensor, ...]] | None = None  # (extra key and tensor versions, weights)

    def _pack(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def _pack_key(self) -> tuple:
        """What the weights depend on besides the parameters."""
        return ()

    def packed(self) -> tuple[Tensor, ...]:
        tensors = _tensors_of(self)
        if torch.is_grad_enabled() or traced() or any(t.is_inference() for t in tensors):
            return self._pack()
        key = (self._pack_key(), tuple((t.data_ptr(), t._version) for t in tensors))
        if self._packed is None or self._packed[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, whose versions kernels can key on
                self._packed = (key, self._pack())
        return self._packed[1]

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # new storage (device, dtype): never reuse weights packed from the old one
        return super()._apply(fn, recurse)


def _tensors_of(module: nn.Module) -> list[Tensor]:
    """Parameters and buffers (BatchNorm statistics) of ``module`` and its children: a plain walk of their
    dicts, half the cost of ``parameters()`` + ``buffers()``, which ``packed`` pays ~150 times per forward."""
    tensors: list[Tensor] = []
    stack = [module]
    while stack:
        current = stack.pop()
        tensors += [t for t in current._parameters.values() if t is not None]
        tensors += [t for t in current._buffers.values() if t is not None]
        stack += [child for child in current._modules.values() if child is not None]
    return tensors


class Conv1x1(nn.Conv2d):
    """A 1x1 nn.Conv2d computed by ``pointwise_conv`` (same parameters, same outputs)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return pointwise_conv(x, weight, bias)


class TokenLinear(nn.Linear):
    """An nn.Linear computed by ``token_linear`` (same parameters, same outputs)."""

    def forward(self, x: Tensor) -> Tensor:
        return token_linear(x, self.weight, self.bias)


def uses_running_statistics(bn: nn.Module) -> bool:
    """``bn`` is a BatchNorm normalising with its stored statistics (eval mode): an affine map, foldable."""
    return isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and not bn.training and bn.track_running_stats


def merges_layers(x: Tensor) -> bool:
    """Whether a forward on ``x`` may run linear layers merged into one (BN folded, projections merged):
    no autograd, no trace (traces record the plain ops), real tensors (shape-only passes on the meta
    device keep every layer's call)."""
    return not torch.is_grad_enabled() and not x.is_meta and not traced()


def _folds(bn: nn.Module, x: Tensor) -> bool:
    return uses_running_statistics(bn) and merges_layers(x)


class ConvBN(PackedWeights):
    """Conv2d followed by BatchNorm2d; ``fold()`` merges the BN into the conv for inference.

    In eval mode outside autograd the forward already runs the folded conv (weights packed once per
    parameter/statistics version), one op instead of two: the same function, 3-7% of an HRViT forward on CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        pointwise = kernel_size == 1 and stride == 1 and padding == 0 and groups == 1
        self.conv = (Conv1x1(in_channels, out_channels, bias) if pointwise
                     else nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias))
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if _folds(self.bn, x):
            return self.conv._conv_forward(x, *self.packed())
        return self.bn(self.conv(x))

    def _pack(self) -> tuple[Tensor, ...]:
        return folded_batchnorm(self.conv.weight, self.conv.bias, self.bn)

    @torch.no_grad()
    def fold(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            _fold_into(self.conv, self.bn)
            self.bn = nn.Identity()


class LinearBN(PackedWeights):
    """Linear over the last dim followed by BatchNorm over all tokens (HRViT's attention output);
    folded on the fly like ``ConvBN``."""

    def __init__(self, in_features: int, out_features: int, zero_init_bn: bool = False) -> None:
        super().__init__()
        self.linear = TokenLinear(in_features, out_features)
        self.bn: nn.Module = nn.BatchNorm1d(out_features)
        if zero_init_bn:  # the residual branch starts silent, as in the paper's recipe
            nn.init.zeros_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        if _folds(self.bn, x):
            return token_linear(x, *self.packed())
        y = self.linear(x)
        return self.bn(y.reshape(-1, y.shape[-1])).view_as(y)

    def _pack(self) -> tuple[Tensor, ...]:
        return folded_batchnorm(self.linear.weight, self.linear.bias, self.bn)

    @torch.no_grad()
    def fold(self) -> None:
        if isinstance(self.bn, nn.BatchNorm1d):
            _fold_into(self.linear, self.bn)
            self.bn = nn.Identity()


def folded_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Weight and bias of a conv/linear followed by eval-mode ``bn``, as one layer:
    y = gamma * (Wx + b - mean) / std + beta  ==>  W' = W * gamma/std, b' = (b - mean) * gamma/std + beta."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), (bias - bn.running_mean) * scale + bn.bias


def _fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> None:
    weight, bias = folded_batchnorm(layer.weight, layer.bias, bn)
    layer.weight.copy_(weight)
    layer.bias = nn.Parameter(bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


# DES widths whose p x p mixing has p <= 8 run as two (C, C) linears: sgemm with 4 or 8 as its inner sizes
# is so inefficient that 5-10x the MACs take less time (1 thread, min of 9 interleaved rounds: C=32 at 56x56
# 1.5 vs 0.2 ms, C=96 at 28x28 0.54 vs 0.49 ms); from p=16 on the tiny mixings are as fast.
_DES_KRON_MAX_P = 8


class DES(PackedWeights):
    """Diversity-enhanced shortcut: C = k*p, a p x p mixing then a k x k mixing (two tiny Linears).

    Computed as ``left @ gelu(x.view(k, p) @ right^T)``, the k x k mixing as one (k, k) @ (k, N*p) GEMM
    over all tokens (``torch.matmul`` of a weight that requires grad instead runs N tiny products, even
    without autograd: 2x slower at 14x14x128); for small ``p`` as two linears on the flat channels with
    the Kronecker weights ``I_k (x) right`` and ``left (x) I_p`` (exact: the extra terms are products
    with zero), packed like MixCFN's kernels. Traces record the tiny mixings.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        exponent = int(math.log2(dim))
        self.p = 2 ** (exponent - exponent // 2)
        self.k = dim // self.p
        if self.k * self.p != dim:
            raise ConfigError(f"channels: {dim} cannot be split as k x {self.p} for the DES shortcut; allowed: a multiple of {self.p}")
        self.right = nn.Linear(self.p, self.p)
        self.left = nn.Linear(self.k, self.k)

    def forward(self, x: Tensor) -> Tensor:
        if self.p <= _DES_KRON_MAX_P and not traced():
            right, right_bias, left, left_bias = self.packed()
            return token_linear(F.gelu(token_linear(x, right, right_bias)), left, left_bias)
        shape = x.shape
        y = F.gelu(F.linear(x.reshape(-1, self.k, self.p), self.right.weight, self.right.bias))  # (N, k, p)
        y = torch.addmm(self.left.bias[:, None], self.left.weight, y.transpose(0, 1).reshape(self.k, -1))
        return y.view(self.k, -1, self.p).transpose(0, 1).reshape(shape)

    def _pack(self) -> tuple[Tensor, ...]:
        """(C, C) weights and biases of the two mixings on the flat channels (c = j * p + q)."""
        right, left = self.right.weight, self.left.weight
        eye_k, eye_p = (torch.eye(n, dtype=right.dtype, device=right.device) for n in (self.k, self.p))
        return (torch.kron(eye_k, right), self.right.bias.repeat(self.k),
                torch.kron(left, eye_p), self.left.bias.repeat_interleave(self.p))


class MixCFN(PackedWeights):
    """Linear -> [depthwise 3x3 | depthwise 5x5] on the two channel halves -> GELU -> Linear.

    Both halves run as one depthwise 5x5 conv (the 3x3 kernels zero-padded): one kernel call, no channel
    split, no concat of activations; the packed kernel is built once per weight version (``PackedWeights``).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        if hidden % 2:
            raise ConfigError(f"mlp_ratios: hidden width {hidden} of a {dim}-channel MixCFN is odd; allowed: ratio x channels even")
        half = hidden // 2
        self.fc1 = TokenLinear(dim, hidden)
        self.conv3 = nn.Conv2d(half, half, 3, padding=1, groups=half)
        self.conv5 = nn.Conv2d(half, half, 5, padding=2, groups=half)
        self.fc2 = TokenLinear(hidden, dim)

    @property
    def hidden(self) -> int:
        """The hidden width the forward computes."""
        return self.fc1.out_features

    def parts(self) -> dict[str, Tensor]:
        """The parameters of a MixCFN of width ``hidden``, by state-dict name (an elastic subclass slices them)."""
        return dict(self.named_parameters())

    def _pack_key(self) -> tuple:
        return (self.hidden,)

    def _pack(self) -> tuple[Tensor, ...]:
        """fc1 weight and bias, the packed 5x5 kernel and its bias, fc2 weight and bias."""
        p = self.parts()
        kernel = torch.cat([F.pad(p["conv3.weight"], (1, 1, 1, 1)), p["conv5.weight"]])
        bias = torch.cat([p["conv3.bias"], p["conv5.bias"]])
        return p["fc1.weight"], p["fc1.bias"], kernel, bias, p["fc2.weight"], p["fc2.bias"]

    def forward(self, x: Tensor) -> Tensor:
        fc1_w, fc1_b, kernel, kernel_b, fc2_w, fc2_b = self.packed()
        return token_linear(depthwise5_gelu(to_nchw(token_linear(x, fc1_w, fc1_b)), kernel, kernel_b), fc2_w, fc2_b)


def depthwise5_gelu(x: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
    """GELU(depthwise 5x5 conv) of a channels-last (B, C, H, W) map, as (B, H, W, C) tokens. Without
    autograd also as one oneDNN call with GELU fused into the conv, where that was measured faster (at
    56x56x128 on one EPYC thread 0.57-0.73 ms against ~0.95 ms for conv then GELU)."""
    if torch.is_grad_enabled() or not _tunable(x) or _FUSED_CONV is None:
        return _depthwise5_then_gelu(x, kernel, bias)
    return run_fastest(("depthwise5-gelu", x.shape, x.stride()), _DEPTHWISE5_GELU_KERNELS, x, kernel, bias)


def _depthwise5_then_gelu(x: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
    return F.gelu(to_nhwc(F.conv2d(x, kernel, bias, padding=2, groups=kernel.shape[0])))


def _depthwise5_gelu_fused(x: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
    return to_nhwc(_FUSED_CONV(x, kernel, bias, [2, 2], [1, 1], [1, 1], kernel.shape[0], "gelu", [], "none"))


_DEPTHWISE5_GELU_KERNELS = {"separate": _depthwise5_then_gelu, "fused": _depthwise5_gelu_fused}


class PatchEmbed(nn.Module):
    """Per-branch re-embedding at the start of a module: 1x1 conv, depthwise 3x3, LayerNorm."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.pw = Conv1x1(in_channels, dim)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> normalised tokens (B, H, W, dim)."""
        return self.norm(to_nhwc(self.dw(self.pw(x))))

"""HRViT's cross-shaped window attention, computed with fused SDPA on batched strips.

Half of the channels attend within horizontal strips (``ws`` rows x full width), the other half within
vertical strips (full height x ``ws`` columns). Keys are the values (one shared projection). When the
map is not a multiple of ``ws`` the last strip is shorter (the reference zero-pads it and masks the
padded keys: the same function).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_space.kernels import run_fastest
from hrvit_space.layers import LinearBN, TokenLinear, _tunable, to_nchw, to_nhwc, traced


@functools.lru_cache(maxsize=64)
def _key_padding_mask(batch: int, strips: int, length: int, valid: int, device: torch.device) -> Tensor:
    """(batch*strips, 1, 1, length) bool: True where a key takes part; only the last strip is short."""
    mask = torch.ones(strips, length, dtype=torch.bool, device=device)
    mask[-1, valid:] = False
    return mask.repeat(batch, 1).view(batch * strips, 1, 1, length)


def strip_attention(q: Tensor, v: Tensor, window: int, heads: int) -> Tensor:
    """Attention within horizontal strips of ``window`` rows; q, v: (B, H, W, C) (key = value).

    A strip of ``window`` full rows is contiguous in (B, H, W, C) memory, so all strips of all images
    form one SDPA batch by a view, and SDPA's output comes back in the same layout. When ``window`` does
    not divide the height, the last, shorter strip is a second SDPA call over its valid rows: no padded
    copies of q and v and no mask (which slows the fused kernel; b2 at 512x512 has 48 such calls per
    forward). Traces record the padded, masked form, whose MACs are the architecture's
    (``profiling.analytic``).
    """
    height = q.shape[1]
    if traced():
        return _padded_strip_attention(q, v, window, heads)
    full = height - height % window
    if full == height:
        return _strips(q, v, window, heads)
    if full == 0:
        return _strips(q, v, height, heads)
    return torch.cat([_strips(q[:, :full], v[:, :full], window, heads),
                      _strips(q[:, full:], v[:, full:], height - full, heads)], dim=1)


def _strips(q: Tensor, v: Tensor, window: int, heads: int, mask: Tensor | None = None) -> Tensor:
    """Attention within the strips of maps whose height ``window`` divides; ``mask`` (the padded form's)
    says which keys of each strip take part."""
    batch, height, width, channels = q.shape
    strips, length = height // window, window * width
    q = q.reshape(batch * strips, length, heads, channels // heads).transpose(1, 2)
    v = v.reshape(batch * strips, length, heads, channels // heads).transpose(1, 2)
    out = _attend(q, v) if mask is None else _fused_attention(q, v, mask)
    return out.transpose(1, 2).reshape(batch, height, width, channels)


def _padded_strip_attention(q: Tensor, v: Tensor, window: int, heads: int) -> Tensor:
    """``strip_attention`` on maps zero-padded to a multiple of ``window`` rows, padded keys masked out."""
    batch, height, width, _ = q.shape
    pad = -height % window
    if not pad:
        return _strips(q, v, window, heads)
    q, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, v))
    mask = _key_padding_mask(batch, (height + pad) // window, window * width, (window - pad) * width, q.device)
    return _strips(q, v, window, heads, mask)[:, :height]


def _explicit_attention(q: Tensor, v: Tensor) -> Tensor:
    """softmax(q v^T / sqrt(d)) v with the scores materialised: faster than fused SDPA at some strip
    shapes on some CPUs (``hrvit_space.kernels``); only used without autograd (it keeps the scores)."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, v.transpose(-2, -1))
    return torch.matmul(scores.softmax(-1), v)


def _fused_attention(q: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    return F.scaled_dot_product_attention(q, v, v, attn_mask=mask)


_ATTENTION_KERNELS = {"fused": _fused_attention, "explicit": _explicit_attention}


def _attend(q: Tensor, v: Tensor) -> Tensor:
    """Attention of (N, heads, L, d) queries over keys = values ``v``, by the kernel measured faster."""
    if torch.is_grad_enabled() or not _tunable(q):
        return _fused_attention(q, v)
    return run_fastest(("attention", q.shape, q.stride()), _ATTENTION_KERNELS, q, v)


class CrossShapedAttention(nn.Module):
    """Cross-shaped window self-attention with a depthwise-conv parallel path (HRViT, Sec. 3.2).

    ``window_size`` does not change any weight, so a supernet can switch it freely.
    """

    def __init__(self, dim: int, dim_head: int, window_size: int) -> None:
        super().__init__()
        half = dim // 2
        self.head_dim = min(half, dim_head)  # a half narrower than dim_head becomes one head
        self.heads = half // self.head_dim  # per direction
        self.window_size = window_size
        self.qv = TokenLinear(dim, 2 * dim)
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = LinearBN(dim, dim, zero_init_bn=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) tokens -> (B, H, W, C)."""
        q, v = self.qv(x).chunk(2, dim=-1)
        half = q.shape[-1] // 2
        out = to_nhwc(self.local_conv(to_nchw(F.hardswish(v))))  # parallel path; strips add into it
        out[..., :half].add_(strip_attention(q[..., :half], v[..., :half], self.window_size, self.heads))
        out[..., half:].add_(strip_attention(
            q[..., half:].transpose(1, 2), v[..., half:].transpose(1, 2), self.window_size, self.heads
        ).transpose(1, 2))
        return self.proj(F.hardswish(out))

    def extra_repr(self) -> str:
        return f"heads={self.heads}x2, head_dim={self.head_dim}, window_size={self.window_size}"

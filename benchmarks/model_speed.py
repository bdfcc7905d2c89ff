"""Forward latency of HRViT b1/b2/b3: this implementation vs a reference-style one, side by side.

The reference-style baseline shares every weight with our model and computes it the way the reference
code (facebookresearch/HRViT) does: contiguous NCHW maps for the stem, fusion and head; per branch a
patch embedding that flattens and transposes to tokens (B, N, C) before its LayerNorm; blocks on
(B, N, C) tokens with transposes around every conv and the DES linears, strips built with permutes,
full attention matrices materialised, the padding mask rebuilt on every call (the reference keeps
an lru_cache of 4 entries keyed per module, which the blocks of one forward keep evicting); and a
contiguous NCHW copy of each branch at the end of a module.

Columns: ``ours`` is the plain model (its FLOPs are the architecture's); ``+foldBN`` adds BN folding;
``inference`` is ``optimize_for_inference`` (BN folded, SegFormer fuse conv merged into the branch
projections). Trials are interleaved (every variant once per round) and medians reported, so machine
noise hits all variants alike. Outputs are checked equal first. Runs under ``torch.inference_mode``.

    python benchmarks/model_speed.py                 # b1, b2, b3 at 512x512
    python benchmarks/model_speed.py --size 224
    python benchmarks/model_speed.py --quick         # b1 at 224, few trials
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_space import build_model, fold_batchnorm, optimize_for_inference, preset
from hrvit_space.model import Block, Branch, HRViT


class ReferenceStyleBlock(nn.Module):
    """Computes ``block`` the way the reference code does (same weights, slower layout)."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, t: Tensor, h: int, w: int) -> Tensor:
        b = self.block
        t = t + self.attention(b.attn_norm(t), h, w) + self.des(t)
        return t + self.mixcfn(b.mlp_norm(t), h, w)

    def des(self, t: Tensor) -> Tensor:
        des = self.block.des
        y = des.right(t.view(*t.shape[:2], des.k, des.p)).transpose(-1, -2)
        return des.left(F.gelu(y)).transpose(-1, -2).flatten(-2)

    def mixcfn(self, t: Tensor, h: int, w: int) -> Tensor:
        mlp = self.block.mlp
        y = mlp.fc1(t)
        batch, n, c = y.shape
        y = y.transpose(1, 2).reshape(batch, c, h, w)
        a, b = y.chunk(2, dim=1)
        y = F.gelu(torch.cat([mlp.conv3(a), mlp.conv5(b)], dim=1))
        return mlp.fc2(y.flatten(2).transpose(-1, -2))

    def attention(self, t: Tensor, h: int, w: int) -> Tensor:
        attn = self.block.attn
        batch, n, c = t.shape
        q, v = attn.qv(t).chunk(2, dim=-1)
        local = attn.local_conv(F.hardswish(v).transpose(1, 2).reshape(batch, c, h, w)).flatten(2).transpose(-1, -2)
        half = c // 2
        rows = self.strips(q[..., :half], v[..., :half], h, w, attn.window_size, attn.head_dim, horizontal=True)
        cols = self.strips(q[..., half:], v[..., half:], h, w, attn.window_size, attn.head_dim, horizontal=False)
        out = F.hardswish(torch.cat([rows, cols], dim=-1) + local)
        return attn.proj(out)

    @staticmethod
    def strips(q: Tensor, v: Tensor, h: int, w: int, ws: int, dh: int, horizontal: bool) -> Tensor:
        batch, n, c = q.shape
        hp, wp = (math.ceil(h / ws) * ws, w) if horizontal else (h, math.ceil(w / ws) * ws)
        if (hp, wp) != (h, w):  # like the reference, go through NCHW to pad only when the strips do not divide
            pad = [0, wp - w, 0, hp - h]
            q, v = (F.pad(z.transpose(-1, -2).reshape(batch, c, h, w), pad).flatten(2).transpose(-1, -2) for z in (q, v))
        if horizontal:
            split = lambda z: z.reshape(batch, hp // ws, ws, w, c // dh, dh).permute(0, 1, 4, 2, 3, 5).flatten(3, 4)  # noqa: E731
        else:
            split = lambda z: z.reshape(batch, h, wp // ws, ws, c // dh, dh).permute(0, 2, 4, 3, 1, 5).flatten(3, 4)  # noqa: E731
        q, v = split(q), split(v)
        attn = q.matmul(v.transpose(-2, -1)).mul(dh**-0.5)
        if (hp, wp) != (h, w):
            length = attn.size(-1)
            valid = (ws - hp + h) * w if horizontal else (ws - wp + w) * h
            mask = torch.full((length, length), -100.0, device=q.device)
            mask[:valid, :valid] = 0
            attn = torch.cat([attn[:, :-1], attn[:, -1:] + mask], dim=1)
        out = attn.softmax(-1).matmul(v)
        if horizontal:
            out = out.reshape(batch, hp // ws, c // dh, ws, w, dh).permute(0, 1, 3, 4, 2, 5).reshape(batch, hp, w, c)[:, :h]
        else:
            out = out.reshape(batch, wp // ws, c // dh, ws, h, dh).permute(0, 4, 1, 3, 2, 5).reshape(batch, h, wp, c)[:, :, :w]
        return out.reshape(batch, n, c)


class ReferenceStyleBranch(nn.Module):
    """Patch embedding in NCHW, then tokens (B, N, C) through the blocks, then a contiguous NCHW copy."""

    def __init__(self, branch: Branch) -> None:
        super().__init__()
        self.embed, self.norm = branch.embed, branch.norm
        self.blocks = nn.ModuleList(ReferenceStyleBlock(block) for block in branch.blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed.dw(self.embed.pw(x))
        batch, _, h, w = x.shape
        t = self.embed.norm(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            t = block(t, h, w)
        return self.norm(t).reshape(batch, h, w, -1).permute(0, 3, 1, 2).contiguous()


class ReferenceStyleHRViT(nn.Module):
    """``model``'s weights (a copy) computed reference-style; stem, fusion and head run on NCHW maps."""

    def __init__(self, model: HRViT) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        for stage in self.model.stages:
            stage.branches = nn.ModuleList(ReferenceStyleBranch(branch) for branch in stage.branches)

    def forward(self, x: Tensor) -> Tensor:
        xs = [self.model.stem(x.contiguous())]
        for stage in self.model.stages:
            xs = stage(xs)
        return self.model.head(xs)


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and attention-BN gains, so output checks mean something."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
    return model


def timed(model: nn.Module, x: Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["b1", "b2", "b3"], choices=["b1", "b2", "b3"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="fixed CPU thread count")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="b1 at 224, 3 trials")
    args = parser.parse_args()
    if args.quick:
        args.variants, args.size, args.trials = ["b1"], 224, 3
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = " load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"device={device} threads={args.threads} input={args.batch}x3x{args.size}x{args.size} trials={args.trials} (medians, ms){load}")
    print(f"{'variant':8} {'reference-style':>16} {'ours':>8} {'+foldBN':>8} {'inference':>10}   speed-up: {'ours':>6} {'+foldBN':>8} {'inference':>9}")
    for name in args.variants:
        torch.manual_seed(0)
        ours = randomise_bn(build_model(preset(name, input_size=(args.size, args.size)))).eval().to(device)
        baseline = ReferenceStyleHRViT(ours)
        folded = fold_batchnorm(copy.deepcopy(ours))
        inference = optimize_for_inference(copy.deepcopy(ours))
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        variants = {"reference-style": baseline, "ours": ours, "+foldBN": folded, "inference": inference}
        times: dict[str, list[float]] = {key: [] for key in variants}
        with torch.inference_mode():
            expected = baseline(x)
            for key, model in variants.items():
                out = model(x)
                error = (out - expected).abs().max().item() / expected.abs().max().item()
                assert error < 1e-4, f"{name} {key}: outputs differ from the reference-style model (rel. error {error:.2e})"
            for _ in range(args.trials):
                for key, model in variants.items():
                    times[key].append(timed(model, x))
        ms = {key: statistics.median(values) for key, values in times.items()}
        ratios = {key: ms["reference-style"] / ms[key] for key in ("ours", "+foldBN", "inference")}
        print(f"{name:8} {ms['reference-style']:16.1f} {ms['ours']:8.1f} {ms['+foldBN']:8.1f} {ms['inference']:10.1f}   "
              f"          {ratios['ours']:5.2f}x {ratios['+foldBN']:7.2f}x {ratios['inference']:8.2f}x", flush=True)


if __name__ == "__main__":
    main()

"""Reference checkpoint import: a minimal functional re-expression of the reference HRViT, reading weights
by the reference's key names and layouts, must compute what our model computes after the import."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hrvit_nas.errors import UserError
from hrvit_space.model import HRViT, hrvit_b1
from hrvit_space.reference import load_reference_state_dict, to_reference_state_dict
from tests.test_model import randomise, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


class ReferenceForward:
    """Reference semantics in its own layout: tokens (B, N, C), fusion/stage modules interleaved in
    ``features``, fused ``to_qkv``, padded strips with a -100 key mask, materialised attention."""

    def __init__(self, state: dict[str, torch.Tensor], config) -> None:
        self.state, self.config, self.used = state, config, set()

    def p(self, name):
        self.used.add(name)
        return self.state[name]

    def bn(self, x, prefix):
        self.used.add(prefix + ".num_batches_tracked")
        return F.batch_norm(x, self.p(prefix + ".running_mean"), self.p(prefix + ".running_var"),
                            self.p(prefix + ".weight"), self.p(prefix + ".bias"), False, 0.0, 1e-5)

    def conv(self, x, prefix, bias=True, **kwargs):
        return F.conv2d(x, self.p(prefix + ".weight"), self.p(prefix + ".bias") if bias else None, **kwargs)

    def linear(self, x, prefix):
        return F.linear(x, self.p(prefix + ".weight"), self.p(prefix + ".bias"))

    def ln(self, x, prefix):
        return F.layer_norm(x, x.shape[-1:], self.p(prefix + ".weight"), self.p(prefix + ".bias"))

    def __call__(self, x):
        x = F.relu(self.bn(self.conv(x, "stem.conv1", stride=2, padding=1), "stem.bn1"))
        xs = [F.relu(self.bn(self.conv(x, "stem.conv2", stride=2, padding=1), "stem.bn2"))]
        for m, depths in enumerate(self.config.depths):
            xs = self.stage(self.fusion(xs, len(depths), f"features.{2 * m}"), depths, f"features.{2 * m + 1}")
        return self.segformer_head(xs)

    def fusion(self, xs, outputs, prefix):
        outs = []
        for i in range(outputs):
            total = 0
            for j, x in enumerate(xs):
                path = f"{prefix}.blocks.{i}.{j}"
                if j == i:
                    y = x
                elif j < i:
                    s = 2 ** (i - j)
                    y = self.bn(self.conv(x, path + ".0", bias=False, stride=s, padding=s // 2, groups=x.shape[1]), path + ".1")
                    y = self.bn(self.conv(y, path + ".2"), path + ".3")
                else:
                    y = F.interpolate(self.bn(self.conv(x, path + ".0"), path + ".1"), scale_factor=2 ** (j - i), mode="nearest")
                total = total + y
            outs.append(F.gelu(total))
        return outs

    def stage(self, xs, depths, prefix):
        outs = []
        for b, x in enumerate(xs):
            embed = f"{prefix}.patch_embed.{b}"
            y = self.conv(x, embed + ".proj.0")
            y = self.conv(y, embed + ".proj.1", padding=1, groups=y.shape[1])
            batch, channels, h, w = y.shape
            t = self.ln(y.flatten(2).transpose(1, 2), embed + ".norm")
            for k in range(depths[b]):
                t = self.block(t, f"{prefix}.branches.{b}.{k}", h, w, self.config.window_sizes[b])
            t = self.ln(t, f"{prefix}.norm.{b}")
            outs.append(t.transpose(1, 2).reshape(batch, channels, h, w))
        return outs

    def block(self, t, prefix, h, w, ws):
        attn = self.attention(self.ln(t, prefix + ".attn_norm"), prefix + ".attn", h, w, ws)
        t = t + attn + self.des(t, prefix + ".des")
        f = self.linear(self.ln(t, prefix + ".ffn_norm"), prefix + ".ffn.fc1")
        hidden = f.shape[-1]
        img = f.transpose(1, 2).reshape(t.shape[0], hidden, h, w)
        a, b = img.chunk(2, dim=1)
        img = torch.cat([self.conv(a, prefix + ".ffn.conv.conv_3", padding=1, groups=hidden // 2),
                         self.conv(b, prefix + ".ffn.conv.conv_5", padding=2, groups=hidden // 2)], dim=1)
        return t + self.linear(F.gelu(img).flatten(2).transpose(1, 2), prefix + ".ffn.fc2")

    def des(self, t, prefix):
        c = t.shape[-1]
        e = int(math.log2(c))
        p = 2 ** (e - e // 2)
        y = self.linear(t.reshape(*t.shape[:2], c // p, p), prefix + ".proj_right").transpose(-1, -2)
        return self.linear(F.gelu(y), prefix + ".proj_left").transpose(-1, -2).flatten(-2)

    def attention(self, t, prefix, h, w, ws):
        batch, n, c = t.shape
        q, v = self.linear(t, prefix + ".to_qkv").chunk(2, dim=-1)
        conv_v = self.conv(F.hardswish(v).transpose(1, 2).reshape(batch, c, h, w), prefix + ".parallel_conv.1", padding=1, groups=c)
        half = c // 2
        dh = min(half, self.config.dim_head)
        grid = lambda z: z.reshape(batch, h, w, -1)  # noqa: E731
        rows = self.strips(grid(q[..., :half]), grid(v[..., :half]), ws, dh)
        cols = self.strips(grid(q[..., half:]).transpose(1, 2), grid(v[..., half:]).transpose(1, 2), ws, dh).transpose(1, 2)
        out = torch.cat([rows, cols], dim=-1).reshape(batch, n, c) + conv_v.flatten(2).transpose(1, 2)
        out = self.linear(F.hardswish(out), prefix + ".to_out.0")
        return self.bn(out.flatten(0, 1), prefix + ".attn_bn").view_as(out)

    @staticmethod
    def strips(q, v, ws, dh):
        batch, h, w, c = q.shape
        hp = math.ceil(h / ws) * ws
        q, v = (F.pad(z, (0, 0, 0, 0, 0, hp - h)) for z in (q, v))
        q, v = (z.reshape(batch, hp // ws, ws * w, c // dh, dh).permute(0, 1, 3, 2, 4) for z in (q, v))
        attn = q @ v.transpose(-1, -2) * dh**-0.5
        mask = torch.zeros(ws * w)
        mask[(ws - hp + h) * w:] = -100.0
        attn[:, -1] = attn[:, -1] + mask
        out = (attn.softmax(-1) @ v).permute(0, 1, 3, 2, 4).reshape(batch, hp, w, c)
        return out[:, :h]

    def segformer_head(self, xs):
        size = xs[0].shape[-2:]
        maps = [F.interpolate(self.conv(x, f"decode_head.convs.{i}.conv"), size=size, mode="bilinear", align_corners=False)
                for i, x in enumerate(xs)]
        y = F.relu(self.bn(self.conv(torch.cat(maps, dim=1), "decode_head.fusion_conv.conv", bias=False), "decode_head.fusion_conv.bn"))
        return self.conv(y, "decode_head.conv_seg")


def test_imported_reference_weights_compute_the_reference_function():
    config = tiny("segformer")  # windows 3,3,3 on 16x16, 8x8, 4x4 maps: padded strips
    reference_state = to_reference_state_dict(randomise(HRViT(config), seed=5))
    model = HRViT(config)
    checkpoint = {"state_dict": {("" if k.startswith("decode_head.") else "backbone.") + k: v for k, v in reference_state.items()}}
    load_reference_state_dict(model, checkpoint)
    reference = ReferenceForward(reference_state, config)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-4, atol=1e-4)
    assert reference.used == set(reference_state)  # every reference key has a meaning, none is left over


def test_reference_names_of_b1_follow_the_reference_layout():
    state = to_reference_state_dict(hrvit_b1())
    assert state["features.1.branches.0.0.attn.to_qkv.weight"].shape == (64, 32)
    assert state["features.9.branches.3.1.ffn.conv.conv_5.weight"].shape == (512, 1, 5, 5)
    assert state["features.8.blocks.3.0.0.weight"].shape == (32, 1, 9, 9)  # 1/4 -> 1/32 depthwise, stride 8
    assert state["features.6.blocks.0.2.0.weight"].shape == (32, 128, 1, 1)  # upsample path 1/16 -> 1/4
    assert state["decode_head.fusion_conv.conv.weight"].shape == (256, 1024, 1, 1)
    assert not any(k.startswith("features.0.") for k in state)  # module 0 fusion is only the identity
    classifier = to_reference_state_dict(hrvit_b1(head={"kind": "classification", "num_classes": 1000}))
    assert classifier["head.incre_modules.3.0.downsample.0.weight"].shape == (1024, 256, 1, 1)
    assert classifier["head.final_layer.0.weight"].shape == (2048, 1024, 1, 1)
    assert classifier["head.classifier.weight"].shape == (1000, 2048)


def test_backbone_only_model_ignores_head_weights_and_tolerates_missing_bn_counters():
    state = to_reference_state_dict(randomise(HRViT(tiny("segformer")), seed=7))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = load_reference_state_dict(HRViT(tiny("none")), {f"module.{k}": v for k, v in state.items()})
    torch.testing.assert_close(model.stem.conv1.conv.weight, state["stem.conv1.weight"])


def test_mismatching_checkpoint_is_one_clear_user_error():
    state = to_reference_state_dict(HRViT(tiny("segformer")))
    model = HRViT(tiny("segformer"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    broken = {k: v for k, v in state.items() if "to_qkv" not in k} | {"features.1.extra.weight": torch.zeros(1)}
    with pytest.raises(UserError, match=r"missing \(\d+\): .*to_qkv.*unexpected \(1\): features.1.extra.weight"):
        load_reference_state_dict(model, broken)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded
    with pytest.raises(UserError, match="shape mismatch"):
        load_reference_state_dict(HRViT(tiny("segformer", channels=(16, 32, 64, 256))), state)

"""HRViT model: exact sizes of the reference variants, shapes, fast attention vs a naive one, BN tools."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from hrvit_nas.errors import UserError
from hrvit_space.attention import CrossShapedAttention, strip_attention
from hrvit_space.batchnorm import fold_batchnorm, recalibrate_bn
from hrvit_space.config import ArchConfig, HeadConfig, preset
from hrvit_space.heads import MergedSegFormerHead
from hrvit_space.layers import DES, gelu_nchw
from hrvit_space.model import (
    COMPONENTS,
    HRViT,
    build_model,
    component_of,
    hrvit_b1,
    hrvit_b2,
    hrvit_b3,
    optimize_for_inference,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(kind: str = "segformer", **overrides) -> ArchConfig:
    base = dict(
        channels=(16, 32, 64, 128), depths=((1,), (1, 1), (1, 1, 2), (1, 1, 1, 1)), window_sizes=(3, 3, 3, 2),
        mlp_ratios=(2, 3, 2, 1), dim_head=8, input_size=(64, 64),
        head=HeadConfig(kind=kind, width=16, num_classes=5, dropout=0.1),
    )
    return ArchConfig(**{**base, **overrides})


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics, so zero-initialised parts (attention BN) carry signal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("factory", "backbone", "segformer_head", "imagenet_total_m"),
    [(hrvit_b1, 7_758_008, 425_110, 19.69), (hrvit_b2, 20_310_944, 498_838, 32.49), (hrvit_b3, 25_507_960, 3_216_534, 37.87)],
)
def test_reference_variants_have_the_published_parameter_counts(factory, backbone, segformer_head, imagenet_total_m):
    model = factory()
    assert count(model) - count(model.head) == backbone
    assert count(model.head) == segformer_head
    assert count(factory(head={"kind": "none"})) == backbone
    imagenet = count(factory(head={"kind": "classification", "num_classes": 1000}))
    assert round(imagenet / 1e6, 2) == imagenet_total_m


def test_build_model_accepts_preset_names_and_configs():
    assert build_model("b2").config == preset("b2")
    config = tiny()
    assert build_model(config).config is config
    with pytest.raises(UserError, match="preset"):
        build_model("b9")


@pytest.mark.parametrize("size", [(64, 64), (72, 40)])
def test_output_shapes_for_every_head(size):
    x = torch.randn(2, 3, *size)
    strides = [4, 8, 16, 32]
    with torch.no_grad():
        features = HRViT(tiny("none")).eval()(x)
        assert [tuple(f.shape) for f in features] == [
            (2, c, math.ceil(size[0] / s), math.ceil(size[1] / s)) for c, s in zip((16, 32, 64, 128), strides)
        ]
        logits = HRViT(tiny("segformer")).eval()(x)
        assert logits.shape == (2, 5, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
        assert HRViT(tiny("classification")).eval()(x).shape == (2, 5)


def test_training_step_reaches_every_parameter():
    model = randomise(HRViT(tiny("segformer", drop_path_rate=0.0))).train()  # no random zero grads
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_drop_path_rates_rise_over_the_module_depth():
    config = tiny(drop_path_rate=0.3)
    model = HRViT(config)
    expected = config.drop_path_rates()
    for m, stage in enumerate(model.stages):
        for branch in stage.branches:
            assert [block.drop_path.rate for block in branch.blocks] == pytest.approx(expected[m][: len(branch.blocks)])
    assert model.stages[-1].branches[0].blocks[0].drop_path.rate == pytest.approx(0.3)


def test_component_of_covers_every_parameter_and_splits_branches():
    for kind in ("segformer", "classification"):
        model = HRViT(tiny(kind))
        totals = Counter()
        for name, p in model.named_parameters():
            component, branch = component_of(name)
            assert component in COMPONENTS
            assert (branch is None) == (component in ("stem", "head"))
            totals[component] += p.numel()
        assert sum(totals.values()) == count(model)
        assert totals["head"] == count(model.head) and totals["stem"] == count(model.stem)
    assert component_of("stages.3.branches.2.blocks.0.attn.qv.weight") == ("attention", 2)
    assert component_of("stages.3.branches.2.blocks.0.mlp") == ("mixcfn", 2)
    assert component_of("stages.3.branches.1.blocks.0.des.left.bias") == ("des", 1)
    assert component_of("stages.3.branches.1.blocks.0.mlp_norm.weight") == ("norm", 1)
    assert component_of("stages.2.fusion.paths.2.0.dw.conv.weight") == ("fusion", 2)
    assert component_of("stages.2.branches.2.embed.dw.weight") == ("patch_embed", 2)
    with pytest.raises(ValueError):
        component_of("stages.2")


def naive_strip_attention(q: torch.Tensor, v: torch.Tensor, window: int, heads: int) -> torch.Tensor:
    """Loop over strips of valid rows only: softmax(q k^T / sqrt(d)) v, with k = v."""
    out = torch.empty_like(q)
    dh = q.shape[-1] // heads
    for top in range(0, q.shape[1], window):
        for h in range(heads):
            channels = slice(h * dh, (h + 1) * dh)
            qs = q[:, top : top + window, :, channels].flatten(1, 2)
            vs = v[:, top : top + window, :, channels].flatten(1, 2)
            attn = (qs @ vs.transpose(1, 2) / math.sqrt(dh)).softmax(-1)
            out[:, top : top + window, :, channels] = (attn @ vs).view(q.shape[0], -1, q.shape[2], dh)
    return out


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 7, 9])
def test_strip_attention_equals_naive_including_padded_windows(window, traced):
    """Eager runs a short last strip, traces the reference's padded and masked strips: both the same function."""
    q, v = torch.randn(2, 7, 5, 8), torch.randn(2, 7, 5, 8)
    attend = lambda q, v: strip_attention(q, v, window, heads=2)  # noqa: E731
    if traced:
        attend = torch.jit.trace(attend, (q, v))
        assert any(node.kind() == "aten::pad" for node in attend.graph.nodes()) == (7 % window != 0)
    torch.testing.assert_close(attend(q, v), naive_strip_attention(q, v, window, 2))


@pytest.mark.parametrize(("dim", "dim_head", "window"), [(16, 4, 3), (16, 8, 2), (16, 32, 4)])
def test_cross_shaped_attention_equals_naive(dim, dim_head, window):
    attn = randomise(CrossShapedAttention(dim, dim_head, window)).eval()
    x = torch.randn(2, 7, 9, dim)
    with torch.no_grad():
        q, v = attn.qv(x).chunk(2, dim=-1)
        half, heads = dim // 2, max(dim // 2 // dim_head, 1)
        rows = naive_strip_attention(q[..., :half], v[..., :half], window, heads)
        cols = naive_strip_attention(q[..., half:].transpose(1, 2), v[..., half:].transpose(1, 2), window, heads).transpose(1, 2)
        local = attn.local_conv(torch.nn.functional.hardswish(v).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        y = torch.nn.functional.hardswish(torch.cat([rows, cols], -1) + local) @ attn.proj.linear.weight.T + attn.proj.linear.bias
        bn = attn.proj.bn
        expected = (y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(attn(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["segformer", "classification"])
def test_eval_forward_without_autograd_runs_folded_weights_that_follow_the_statistics(kind):
    """Outside autograd an eval-mode model folds BN (and merges the SegFormer projections) on the fly:
    it must equal the autograd forward, also after BN statistics are recalibrated or a weight is updated."""
    model = randomise(HRViT(tiny(kind))).eval()
    x = torch.randn(2, 3, 64, 64)

    def check() -> torch.Tensor:
        with torch.no_grad():
            fast = model(x)
        torch.testing.assert_close(fast, model(x).detach(), rtol=1e-4, atol=1e-4)
        return fast

    before = check()
    recalibrate_bn(model, [torch.randn(2, 3, 64, 64) for _ in range(2)])
    recalibrated = check()
    assert not torch.allclose(recalibrated, before, atol=1e-3)  # the packed weights followed the new statistics
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("stem.conv1.conv.weight")).mul_(1.5)
    assert not torch.allclose(check(), recalibrated, atol=1e-3)


@pytest.mark.parametrize("kind", ["segformer", "classification"])
def test_fold_batchnorm_keeps_outputs_and_removes_bn(kind):
    model = randomise(HRViT(tiny(kind))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["segformer", "classification", "none"])
def test_optimize_for_inference_keeps_outputs(kind):
    model = randomise(HRViT(tiny(kind))).eval()
    x = torch.randn(2, 3, 64, 48)  # non-square: the merged head resizes each branch to the 1/4 map
    with torch.no_grad():
        expected = model(x)
        fast = optimize_for_inference(model)
        outputs = fast(x)
    assert not fast.training
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    assert isinstance(fast.head, MergedSegFormerHead) == (kind == "segformer")
    for got, want in zip(outputs if kind == "none" else [outputs], expected if kind == "none" else [expected]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_merged_segformer_head_without_folding_keeps_its_batchnorm_and_outputs():
    model = randomise(HRViT(tiny())).eval()
    features = [torch.randn(1, c, 16 // 2**b, 12 // 2**b) for b, c in enumerate(model.config.channels)]
    with torch.no_grad():
        torch.testing.assert_close(MergedSegFormerHead(model.head).eval()(features), model.head(features), rtol=1e-4, atol=1e-5)


def concat_segformer_head(head, features):
    """The SegFormer head as defined: project, resize to 1/4, concat, fuse conv + BN, ReLU, classify."""
    size = features[0].shape[-2:]
    maps = [proj(x) for proj, x in zip(head.proj, features)]
    maps = [maps[0]] + [torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
    return head.classifier(head.dropout(torch.relu(head.fuse(torch.cat(maps, dim=1)))))


def test_segformer_head_fuses_per_branch_with_the_concat_heads_outputs_gradients_and_traced_ops():
    head = randomise(HRViT(tiny())).head.train()
    head.dropout.p = 0.0  # the two forwards must see the same (no) dropout
    features = [torch.randn(2, c, 16 // 2**b, 12 // 2**b, requires_grad=True) for b, c in enumerate((16, 32, 64, 128))]
    twin = randomise(HRViT(tiny())).head.train()
    twin.dropout.p = 0.0
    got, want = head(features), concat_segformer_head(twin, features)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # training mode: batch statistics
    grads = torch.autograd.grad(got.square().sum(), [head.fuse.conv.weight, head.proj[3].weight, features[2]])
    expected = torch.autograd.grad(want.square().sum(), [twin.fuse.conv.weight, twin.proj[3].weight, features[2]])
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(head.fuse.bn.running_mean, twin.fuse.bn.running_mean)
    graph = torch.jit.trace(head.eval(), (features,)).inlined_graph  # fvcore and ONNX see the architecture's ops
    assert "aten::cat" in str(graph)


@pytest.mark.parametrize("dim", [32, 96, 128])  # p = 8, 8 (Kronecker linears) and 16 (tiny mixings)
def test_des_equals_its_two_tiny_mixings_with_gradients_and_traces_them(dim):
    des = randomise(DES(dim))
    x = torch.randn(2, 5, 6, dim, requires_grad=True)
    y = torch.nn.functional.gelu(x.view(2, 5, 6, des.k, des.p) @ des.right.weight.T + des.right.bias)
    expected = (des.left.weight @ y + des.left.bias[:, None]).reshape(2, 5, 6, dim)
    got = des(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    wrt = [x, des.right.weight, des.left.weight, des.left.bias]
    for g, e in zip(torch.autograd.grad(got.sum(), wrt), torch.autograd.grad(expected.sum(), wrt)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    graph = str(torch.jit.trace(des.eval(), x.detach()).inlined_graph)  # fvcore counts the architecture's MACs
    assert "aten::kron" not in graph
    tokens = x[..., 0].numel()
    assert FlopCountAnalysis(des, x.detach()).total() == tokens * (des.k * des.p**2 + des.k**2 * des.p)  # the tiny mixings' MACs


def test_des_packs_its_kronecker_weights_once_per_weight_version():
    des = randomise(DES(32))
    x = torch.randn(1, 4, 4, 32)
    with torch.no_grad():
        first, again = des.packed(), des.packed()
        assert all(a is b for a, b in zip(first, again))
        des.left.weight.mul_(2.0)  # an in-place update (an optimizer step) must not reuse the old weights
        y = torch.nn.functional.gelu(x.view(1, 4, 4, des.k, des.p) @ des.right.weight.T + des.right.bias)
        torch.testing.assert_close(des(x), (des.left.weight @ y + des.left.bias[:, None]).reshape(x.shape))


def test_gelu_on_channels_last_maps_keeps_layout_and_values():
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    y = gelu_nchw(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, torch.nn.functional.gelu(x))


def test_recalibrate_bn_sets_exact_batch_statistics_and_returns_eval_mode():
    model = randomise(HRViT(tiny("none")))
    batches = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    recalibrate_bn(model, ((b, "label") for b in batches), num_batches=2)
    assert not model.training
    conv = model.stem.conv1.conv
    with torch.no_grad():
        out = torch.cat([conv(b) for b in batches[:2]])
    bn = model.stem.conv1.bn
    assert int(bn.num_batches_tracked) == 2
    torch.testing.assert_close(bn.running_mean, out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1  # restored


def test_recalibrate_bn_without_batches_is_a_user_error_and_keeps_statistics():
    model = randomise(HRViT(tiny("none")))
    before = model.stem.conv1.bn.running_mean.clone()
    with pytest.raises(UserError, match="no batches"):
        recalibrate_bn(model, [])
    torch.testing.assert_close(model.stem.conv1.bn.running_mean, before)

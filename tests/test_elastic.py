"""Elastic modules hand out their active sub-module; MixCFN packs its kernels once; oneDNN-routed layers
compute what nn.Linear / nn.Conv2d compute."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrvit_space import kernels, layers
from hrvit_space.attention import CrossShapedAttention
from hrvit_space.layers import Conv1x1, MixCFN, TokenLinear
from hrvit_space.model import Block, Branch, HRViT
from hrvit_space.supernet import ElasticAttention, ElasticBlock, ElasticBranch, ElasticMixCFN, HRViTSupernet
from tests.test_model import randomise
from tests.test_supernet import tiny_space

DIM, HIDDEN = 16, 48

pytestmark = pytest.mark.usefixtures("one_thread")


def tokens(batch: int = 2, height: int = 7, width: int = 9, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, height, width, dim, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- active sub-modules
@pytest.mark.parametrize("hidden", [16, 32, HIDDEN])
def test_elastic_mixcfn_hands_out_a_standalone_mixcfn_of_its_width(hidden):
    elastic = randomise(ElasticMixCFN(DIM, HIDDEN)).eval()
    elastic.set_active(hidden)
    subnet = elastic.active_subnet()
    assert type(subnet) is MixCFN and subnet.fc1.out_features == hidden
    assert sum(p.numel() for p in subnet.parameters()) == sum(p.numel() for p in MixCFN(DIM, hidden).parameters())
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), elastic(x))


@pytest.mark.parametrize("window", [1, 2, 3])
def test_elastic_attention_hands_out_an_attention_with_its_window(window):
    elastic = randomise(ElasticAttention(DIM, 4, 3)).eval()
    elastic.set_active(window)
    subnet = elastic.active_subnet()
    assert type(subnet) is CrossShapedAttention and subnet.window_size == window and subnet.heads == elastic.heads
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), elastic(x))


def test_elastic_block_hands_out_a_block_of_its_setting():
    elastic = randomise(ElasticBlock(DIM, 4, 3, HIDDEN, 0.0)).eval()
    elastic.set_active(window_size=2, hidden=32, drop_path=0.25)
    subnet = elastic.active_subnet()
    assert type(subnet) is Block and type(subnet.attn) is CrossShapedAttention and type(subnet.mlp) is MixCFN
    assert (subnet.attn.window_size, subnet.mlp.fc1.out_features, subnet.drop_path.rate) == (2, 32, 0.25)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), elastic(x))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_elastic_branch_hands_out_its_first_blocks(depth):
    elastic = randomise(ElasticBranch.build(8, DIM, 3, 4, 3, HIDDEN, [0.0, 0.1, 0.2])).eval()
    elastic.set_active(depth, window_size=2, hidden=32, drop_rates=[0.0, 0.1, 0.2][:depth])
    subnet = elastic.active_subnet()
    assert type(subnet) is Branch and len(subnet.blocks) == depth
    assert [block.drop_path.rate for block in subnet.blocks] == [0.0, 0.1, 0.2][:depth]
    x = torch.randn(2, 8, 7, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), elastic(x))


@pytest.mark.parametrize("member", ["smallest", "largest", 3, 7])
def test_extract_hands_out_the_active_member_in_train_mode_too(member):
    """In train mode (BN on batch statistics) the extracted member still computes what the supernet does."""
    supernet = randomise(HRViTSupernet(tiny_space()), seed=3).train()
    space = supernet.space
    config = getattr(space, member)() if isinstance(member, str) else space.sample(member)
    supernet.set_active(config)
    subnet = supernet.extract()
    assert subnet.training and subnet.config == config
    assert not any(tensor.is_meta for tensor in subnet.state_dict().values())
    assert all(type(m) is not cls for m in subnet.modules() for cls in (ElasticBranch, ElasticBlock, ElasticMixCFN, ElasticAttention))
    assert [[b.drop_path.rate for b in branch.blocks] for stage in subnet.stages for branch in stage.branches] == \
        [[b.drop_path.rate for b in branch.blocks] for stage in HRViT(config).stages for branch in stage.branches]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    outputs = []
    for model in (subnet, supernet):  # the same random drop-path and dropout masks for both
        torch.manual_seed(0)
        outputs.append(model(x))
    torch.testing.assert_close(*outputs, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- MixCFN packed kernels
def test_mixcfn_packs_its_kernels_once_outside_autograd():
    mlp = randomise(MixCFN(DIM, HIDDEN)).eval()
    with torch.no_grad():
        first = mlp.packed()
        again = mlp.packed()
    with torch.inference_mode():
        inside = mlp.packed()
    assert again[2] is first[2] and inside[2] is first[2]
    assert first[2].shape == (HIDDEN, 1, 5, 5)
    torch.testing.assert_close(first[2][: HIDDEN // 2, :, 1:-1, 1:-1], mlp.conv3.weight)
    assert (first[2][: HIDDEN // 2, :, 0] == 0).all()


def test_mixcfn_repacks_after_an_optimizer_step_and_a_dtype_change():
    mlp = randomise(MixCFN(DIM, HIDDEN))
    x = tokens()
    with torch.no_grad():
        before = mlp(x)
    mlp(x).square().mean().backward()
    torch.optim.SGD(mlp.parameters(), lr=1.0).step()
    with torch.no_grad():
        after = mlp(x)
        fresh = MixCFN(DIM, HIDDEN)
        fresh.load_state_dict(mlp.state_dict())
        torch.testing.assert_close(after, fresh(x))
        assert not torch.allclose(after, before)
        mlp.double()
        assert mlp(x.double()).dtype == torch.float64


def test_elastic_mixcfn_repacks_when_its_width_changes():
    mlp = randomise(ElasticMixCFN(DIM, HIDDEN)).eval()
    x = tokens()
    with torch.no_grad():
        for hidden in (16, HIDDEN, 16):
            mlp.set_active(hidden)
            assert mlp.packed()[2].shape[0] == hidden
            torch.testing.assert_close(mlp(x), mlp.active_subnet()(x))


def test_mixcfn_built_in_inference_mode_runs_without_version_counters():
    with torch.inference_mode():
        mlp = MixCFN(DIM, HIDDEN)
        assert mlp(tokens()).shape == (2, 7, 9, DIM)


def test_mixcfn_gradients_reach_both_kernel_halves():
    mlp = randomise(MixCFN(DIM, HIDDEN))
    with torch.no_grad():
        mlp.packed()  # a cached pack must not stand in for the parameters under autograd
    mlp(tokens()).square().mean().backward()
    assert mlp.conv3.weight.grad.abs().sum() > 0 and mlp.conv5.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- oneDNN-routed layers
@pytest.mark.parametrize("shape", [(1, 56, 56, 16), (3, 5, 7, 16), (1, 4, 4, 16)])  # oneDNN, oneDNN (batch), BLAS
def test_token_linear_and_conv1x1_equal_the_plain_layers_with_gradients(shape):
    linear = TokenLinear(16, 24)
    plain = nn.Linear(16, 24)
    plain.load_state_dict(linear.state_dict())
    x = torch.randn(shape, requires_grad=True)
    torch.testing.assert_close(linear(x), plain(x), rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(linear(x).square().sum(), [x, linear.weight])
    expected = torch.autograd.grad(plain(x).square().sum(), [x, plain.weight])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    conv = Conv1x1(16, 24)
    nchw = x.detach().permute(0, 3, 1, 2)
    torch.testing.assert_close(conv(nchw), F.conv2d(nchw, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace: what the exporters still use
@pytest.mark.parametrize("choice, op", [("onednn", "aten::mkldnn_convolution"), ("blas", "aten::addmm"),
                                        pytest.param("onednn-packed", "mkldnn::_linear_pointwise", marks=pytest.mark.skipif(
                                            layers._PACKED_LINEAR is None, reason="torch built without oneDNN's matmul"))])
def test_pointwise_layers_run_the_chosen_kernel_and_traces_keep_plain_ops(monkeypatch, choice, op):
    """Each shape runs the kernel chosen for it (measured once, ``hrvit_space.kernels``); oneDNN is called
    directly, never through a dilated conv2d (its dilated kernel took 3-12x longer on small maps)."""
    monkeypatch.setattr(kernels, "_choices", {})
    monkeypatch.setattr(kernels, "_measure", lambda candidates, args: choice)
    linear, x = TokenLinear(16, 24), torch.randn(1, 56, 56, 16)
    conv = Conv1x1(16, 24)
    with torch.profiler.profile() as prof, torch.no_grad():
        out = linear(x)
        conv_out = conv(x.permute(0, 3, 1, 2))
    ops = {event.key for event in prof.key_averages()}
    assert op in ops and "aten::convolution" not in ops
    assert {value for value in kernels.chosen_kernels().values()} == {choice}
    torch.testing.assert_close(out, F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    nchw = x.permute(0, 3, 1, 2)
    torch.testing.assert_close(conv_out, F.conv2d(nchw, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)
    traced = torch.jit.trace(linear, x)  # what fvcore counts and ONNX exports: the plain op
    assert "aten::linear" in str(traced.graph) and "conv" not in str(traced.graph)


def test_kernel_choice_measures_once_per_key_and_keeps_the_default_unless_clearly_faster(monkeypatch):
    monkeypatch.setattr(kernels, "_choices", {})
    calls = {"default": 0, "slow": 0, "fast": 0}

    def candidate(name, seconds):
        def run():
            calls[name] += 1
            time.sleep(seconds)
            return torch.tensor(float(len(name)))
        return run

    slower = {"default": candidate("default", 0.002), "slow": candidate("slow", 0.006)}
    assert kernels.run_fastest(("k", 1), slower).item() == len("default")
    faster = {"default": candidate("default", 0.006), "fast": candidate("fast", 0.0)}
    assert kernels.run_fastest(("k", 2), faster).item() == len("fast")
    measured = dict(calls)
    kernels.run_fastest(("k", 2), faster)  # the second call with a key runs only the winner
    assert calls["fast"] == measured["fast"] + 1 and calls["default"] == measured["default"]
    monkeypatch.setenv("HRVIT_NAS_KERNELS", "first")
    assert kernels.run_fastest(("k", 3), faster).item() == len("default")  # measurement off: the default


@pytest.mark.skipif(layers._PACKED_LINEAR is None, reason="torch built without oneDNN's matmul")
def test_packed_linear_weights_follow_in_place_updates_and_never_reach_autograd(monkeypatch):
    """oneDNN's reordered weight copy is reused only while the weight is unchanged: an optimizer step, a
    ``load_state_dict`` or a BN statistics update shows in the next eval output, also inside inference mode."""
    monkeypatch.setattr(kernels, "_choices", {})
    monkeypatch.setattr(kernels, "_measure", lambda candidates, args: "onednn-packed" if "onednn-packed" in candidates else "blas")
    linear, x = TokenLinear(16, 24), tokens(height=14, width=14)
    with torch.no_grad():
        first = linear(x)
        assert linear(x).equal(first)  # the cached copy: same kernel, same result
    linear(x).square().mean().backward()  # under autograd the packed kernel is no candidate: the weight gets a gradient
    assert linear.weight.grad.abs().sum() > 0
    torch.optim.SGD(linear.parameters(), lr=1.0).step()
    with torch.inference_mode():
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(linear(x), first)
    linear.load_state_dict({"weight": torch.ones(24, 16), "bias": torch.zeros(24)})
    with torch.no_grad():
        torch.testing.assert_close(linear(x), x.sum(-1, keepdim=True).expand(-1, -1, -1, 24), rtol=1e-5, atol=1e-5)
    norm_linear = randomise(layers.LinearBN(16, 24)).eval()  # folded weights: built by PackedWeights, cached here
    with torch.inference_mode():
        before = norm_linear(x)
        norm_linear.bn.running_mean.add_(1.0)
        plain = norm_linear.bn(F.linear(x, norm_linear.linear.weight, norm_linear.linear.bias).reshape(-1, 24)).view_as(before)
        torch.testing.assert_close(norm_linear(x), plain, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(norm_linear(x), before)
    assert any(value == "onednn-packed" for value in kernels.chosen_kernels().values())


def run_with_kernel(monkeypatch, choice: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` without autograd, every tunable op running ``choice`` where it is a candidate."""
    monkeypatch.setattr(kernels, "_choices", {})
    monkeypatch.setattr(kernels, "_measure", lambda candidates, args: choice if choice in candidates else next(iter(candidates)))
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("window", [2, 3])  # 3 does not divide the 7x9 map: the masked last strip
def test_explicit_and_fused_attention_kernels_agree(monkeypatch, window):
    attention = randomise(CrossShapedAttention(DIM, 4, window)).eval()
    x = tokens()
    outputs = {choice: run_with_kernel(monkeypatch, choice, attention, x) for choice in ("fused", "explicit")}
    torch.testing.assert_close(outputs["explicit"], outputs["fused"], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(layers._FUSED_CONV is None, reason="torch built without oneDNN's fused conv")
def test_mixcfn_fused_depthwise_gelu_equals_conv_then_gelu(monkeypatch):
    mlp = randomise(MixCFN(DIM, HIDDEN)).eval()
    x = tokens(height=14, width=14)
    outputs = {choice: run_with_kernel(monkeypatch, choice, mlp, x) for choice in ("separate", "fused")}
    assert any(key[0] == "depthwise5-gelu" and value == "fused" for key, value in kernels.chosen_kernels().items())
    torch.testing.assert_close(outputs["fused"], outputs["separate"], rtol=1e-5, atol=1e-5)

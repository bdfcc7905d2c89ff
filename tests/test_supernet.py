"""Weight-sharing supernet: the active member equals its extracted standalone copy."""

from __future__ import annotations

import pytest
import torch

from hrvit_space.batchnorm import recalibrate_bn
from hrvit_space.config import ConfigError, HeadConfig, preset
from hrvit_space.model import HRViT
from hrvit_space.space import SearchSpace
from hrvit_space.supernet import HRViTSupernet
from tests.test_model import randomise

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_space() -> SearchSpace:
    base = preset(
        "b1", channels=(16, 32, 64, 128), dim_head=8, input_size=(64, 64), window_sizes=(1, 1, 1, 1),
        mlp_ratios=(2, 2, 2, 2), head=HeadConfig(width=16, num_classes=5),
    )
    depths = [[(0, 1, 2) for _ in module] for module in base.depths]
    for m, b in ((0, 0), (1, 1), (2, 2), (4, 3)):  # every branch keeps at least one block
        depths[m][b] = (1, 2)
    # windows of 3 on 16x16, 8x8 and 4x4 maps need padding
    return SearchSpace(base, depths, [(1, 3), (1, 3), (2, 3), (1, 2)], [(1, 2, 3)] * 4)


@pytest.fixture(scope="module")
def supernet() -> HRViTSupernet:
    return randomise(HRViTSupernet(tiny_space()), seed=1).eval()


def test_supernet_is_built_at_the_largest_member_with_hrvit_names(supernet):
    largest = HRViT(supernet.space.largest())
    assert supernet.config == supernet.space.largest()
    assert list(supernet.state_dict()) == list(largest.state_dict())


@pytest.mark.parametrize("seed", range(12))
def test_active_member_equals_extracted_subnet(supernet, seed):
    config = supernet.space.sample(seed)
    supernet.set_active(config)
    subnet = supernet.extract()
    assert subnet.config == config and not subnet.training
    assert sum(p.numel() for p in subnet.parameters()) == sum(p.numel() for p in HRViT(config).parameters())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), supernet(x), rtol=1e-5, atol=1e-5)


def test_members_differ_and_extract_copies_weights(supernet):
    space = supernet.space
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        supernet.set_active(space.smallest())
        small = supernet(x)
        supernet.set_active(space.largest())
        large = supernet(x)
    assert not torch.allclose(small, large)
    subnet = supernet.extract(space.smallest())
    assert supernet.active_config == space.largest()
    with torch.no_grad():
        next(subnet.parameters()).add_(1.0)
    assert not torch.equal(next(subnet.parameters()), next(supernet.parameters()))


def test_set_active_rejects_configs_outside_the_supernet(supernet):
    largest = supernet.space.largest()
    deeper = [list(module) for module in largest.depths]
    deeper[2][2] += 1
    with pytest.raises(ConfigError, match=r"depths\[2\]\[2\]"):
        supernet.set_active(largest.replace(depths=deeper))
    with pytest.raises(ConfigError, match="channels"):
        supernet.set_active(largest.replace(channels=(16, 32, 64, 64)))
    with pytest.raises(ConfigError, match=r"mlp_ratios\[0\]"):
        supernet.set_active(largest.replace(mlp_ratios=(4, 2, 2, 2)))


def test_recalibrate_active_subnet_keeps_inactive_statistics():
    supernet = randomise(HRViTSupernet(tiny_space()), seed=2)
    config = supernet.space.smallest()
    supernet.set_active(config)
    inactive = supernet.stages[2].branches[2].blocks[1].attn.proj.bn  # smallest has 1 block there
    before = inactive.running_var.clone()
    batches = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    recalibrate_bn(supernet, batches)
    torch.testing.assert_close(inactive.running_var, before)
    active = supernet.stages[2].branches[2].blocks[0].attn.proj.bn
    assert int(active.num_batches_tracked) == 2
    # the extracted subnet, recalibrated from scrambled statistics on the same batches, computes the same
    subnet = supernet.extract()
    with torch.no_grad():
        for name, buffer in subnet.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    recalibrate_bn(subnet, batches)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), supernet(x), rtol=1e-4, atol=1e-4)

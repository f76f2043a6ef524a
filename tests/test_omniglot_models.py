"""The Omniglot classifier and its warped versions: shapes, partition, batch-norm reset."""

from __future__ import annotations

import pytest
import torch

from warp_rl import partition
from warp_rl.omniglot.models import OmniConv, WarpConfig

WARPS = [
    WarpConfig(),
    WarpConfig(layers=2, filters=8, residual=True, batch_norm=True, activation="relu"),
    WarpConfig(residual=True, final_head=True, activation="tanh"),
]


def test_plain_shapes():
    torch.manual_seed(0)
    net = OmniConv()
    x = torch.rand(7, 1, 28, 28)
    assert net(x).shape == (7, 20)
    assert net.features(x).shape == (7, 64)
    assert net.warp_modules() == []
    # 4 x (conv + BN) + head
    assert sum(p.numel() for p in net.parameters()) == (
        (9 * 1 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + 4 * 128 + 64 * 20 + 20)


@pytest.mark.parametrize("cfg", WARPS, ids=["default", "2layer-bn-res", "final-head"])
def test_warped_shapes_and_partition(cfg):
    torch.manual_seed(0)
    net = OmniConv(warp=cfg)
    x = torch.rand(5, 1, 28, 28)
    assert net(x).shape == (5, 20)
    part = partition(net, adapt=net.adapt_modules(), warp=net.warp_modules())
    assert part.warp_names and all(n.startswith(("warps.", "warp_head.")) for n in part.warp_names)
    assert all(n.startswith(("blocks.", "head.")) for n in part.adapt_names)
    assert len(part.warp_names) + len(part.adapt_names) == len(list(net.parameters()))
    if cfg.final_head:
        assert net.head.out_features == 64 and net.warp_head.out_features == 20
    if cfg.layers == 2:  # 64 -> 8 -> 64 with 1x1 projections on the residual path
        first, second = net.warps[0]
        assert first.conv.out_channels == 8 and first.scale is not None
        assert second.conv.out_channels == 64 and second.bn_out is not None


def test_default_warp_layer_is_one_linear_conv():
    net = OmniConv(warp=WarpConfig())
    (layer,) = net.warps[0]
    assert layer.act is None and layer.bn_in is None and not layer.residual
    assert layer.conv.kernel_size == (3, 3) and layer.conv.in_channels == 64


def test_batch_norm_reset():
    net = OmniConv(warp=WarpConfig(batch_norm=True))
    net.train()
    net(torch.rand(4, 1, 28, 28))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 8 and all(bn.running_mean.abs().sum() > 0 for bn in bns)
    net.init_adaptation()
    assert all(bn.running_mean.abs().sum() == 0 and bn.num_batches_tracked == 0 for bn in bns)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="activation 'gelu' unknown"):
        WarpConfig(activation="gelu")
    with pytest.raises(ValueError, match="layers=0"):
        WarpConfig(layers=0)
    with pytest.raises(ValueError, match=r"expected images \(N, 1, H, W\)"):
        OmniConv()(torch.rand(2, 28, 28))

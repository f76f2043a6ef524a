"""warp_rl.partition: module lists, predicates, buffers, errors."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

import warp_rl
from warp_rl import partition


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.warp = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.warp(torch.relu(self.bn(self.fc1(x)))))


def test_module_lists_and_default_warp() -> None:
    net = Net()
    part = partition(net, adapt=[net.fc1, net.bn, net.fc2])
    assert part.adapt_names == ("fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                                "fc2.weight", "fc2.bias")
    assert part.warp_names == ("warp.weight", "warp.bias")
    assert part.adapt_buffer_names == ("bn.running_mean", "bn.running_var",
                                       "bn.num_batches_tracked")
    assert part.warp_buffer_names == ()
    assert part.warp_parameters()[0] is net.warp.weight
    assert all(b is c for b, c in zip(part.adapt_buffers(), net.bn.buffers(), strict=True))
    # explicit warp list gives the same split
    assert partition(net, [net.fc1, net.bn, net.fc2], [net.warp]) == part
    assert warp_rl.Partition is type(part)


def test_predicates_and_functional_call() -> None:
    net = Net().eval()
    part = partition(net, adapt=lambda n: not n.startswith("warp."),
                     warp=lambda n: n.startswith("warp."))
    assert part.warp_names == ("warp.weight", "warp.bias")
    assert "bn.running_mean" in part.adapt_buffer_names
    x = torch.randn(5, 3)
    params = {**part.adapt_dict(include_buffers=True), **part.warp_dict()}
    torch.testing.assert_close(functional_call(net, params, (x,)), net(x))
    assert set(part.adapt_dict()) == set(part.adapt_names)


def test_errors() -> None:
    net = Net()
    with pytest.raises(ValueError, match="both adaptable and warp"):
        partition(net, [net.fc1, net.fc2, net.bn], [net.warp, net.fc2])
    with pytest.raises(ValueError, match=r"neither adaptable nor warp.*bn\.weight"):
        partition(net, [net.fc1, net.fc2], [net.warp])
    with pytest.raises(ValueError, match="adapt selects no parameter"):
        partition(net, lambda n: False)
    with pytest.raises(ValueError, match="not a submodule"):
        partition(net, [nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="wrap it in a list"):
        partition(net, net.fc1)
    with pytest.raises(TypeError, match=r"must be an nn\.Module"):
        partition(net, [net.fc1, "fc2"])
    with pytest.raises(TypeError, match="sequence of submodules or a callable"):
        partition(net, 3)

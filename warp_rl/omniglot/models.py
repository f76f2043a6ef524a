"""The Omniglot classifier and its warped version.

``OmniConv``: 4 blocks of [3x3 conv, ``num_filters`` filters, padding 1 -> 2x2 max-pool ->
batch norm -> ReLU] on ``(N, 1, 28, 28)`` images (28 -> 14 -> 7 -> 3 -> 1 pixels), flattened to
``num_filters`` features, then ``Linear(num_filters -> num_classes)``.

With a :class:`WarpConfig`, warp layers follow every block (the task-adaptable layers are the
blocks and the head; the warp layers are meta-learned and held fixed while a task adapts). A
warp layer is [batch norm (optional) -> 3x3 conv -> activation (optional) -> + residual
(optional; a 1x1 conv matches channels if needed) -> batch norm (optional, residual only)], as
in the original code; ``layers`` of them per block, the inner ones with ``filters`` channels.
``final_head`` makes the adaptable head ``Linear(F -> F)`` followed by a warp ``Linear(F -> C)``.

Batch-norm statistics are per task: :meth:`OmniConv.reset_batch_norm` resets them (all of them,
warp layers included) before a task adapts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


@dataclass(frozen=True)
class WarpConfig:
    """Warp-layer capacity (the paper's default: one linear 3x3 conv, no batch norm).

    Attributes:
        layers: warp layers after each block (>= 1).
        filters: output channels of the inner warp layers (the last one has ``num_filters``).
        residual: add a residual connection around each warp layer.
        batch_norm: batch norm inside each warp layer.
        activation: one of :data:`ACTIVATIONS`.
        final_head: also warp the classifier head.
    """

    layers: int = 1
    filters: int = 64
    residual: bool = False
    batch_norm: bool = False
    activation: str = "none"
    final_head: bool = False

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"warp layers={self.layers} must be >= 1")
        if self.filters < 1:
            raise ValueError(f"warp filters={self.filters} must be >= 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"warp activation {self.activation!r} unknown; choose from {sorted(ACTIVATIONS)}"
            )


def conv_block(in_channels: int, num_filters: int) -> nn.Sequential:
    """[3x3 conv (padding 1) -> 2x2 max-pool -> batch norm -> ReLU]: halves the side."""
    return nn.Sequential(
        nn.Conv2d(in_channels, num_filters, 3, padding=1),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(num_filters),
        nn.ReLU(),
    )


class WarpLayer(nn.Module):
    """One convolutional warp layer, ``(N, C_in, H, W) -> (N, C_out, H, W)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        residual: bool = False,
        batch_norm: bool = False,
        activation: str = "none",
    ) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(in_channels) if batch_norm else None
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        act = ACTIVATIONS[activation]
        self.act = act() if act is not None else None
        self.residual = residual
        self.scale = (
            nn.Conv2d(in_channels, out_channels, 1)
            if residual and in_channels != out_channels
            else None
        )
        self.bn_out = nn.BatchNorm2d(out_channels) if batch_norm and residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.bn_in is None else self.bn_in(x)
        h = self.conv(h)
        if self.act is not None:
            h = self.act(h)
        if self.residual:
            h = h + (x if self.scale is None else self.scale(x))
        if self.bn_out is not None:
            h = self.bn_out(h)
        return h


class OmniConv(nn.Module):
    """The 4-block conv classifier, warped when ``warp`` is given.

    Args:
        num_classes: outputs (20-way tasks).
        num_filters: channels of every block.
        num_blocks: conv blocks (4 for 28x28 inputs).
        warp: warp-layer configuration, or None for the plain classifier.

    Shapes: ``forward(x (N, 1, 28, 28)) -> logits (N, num_classes)``;
    ``features(x) -> (N, num_filters)`` (the input of the head).
    """

    def __init__(
        self,
        num_classes: int = 20,
        num_filters: int = 64,
        num_blocks: int = 4,
        warp: WarpConfig | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2 or num_filters < 1 or num_blocks < 1:
            raise ValueError(
                f"need num_classes >= 2, num_filters >= 1, num_blocks >= 1; got {num_classes}, "
                f"{num_filters}, {num_blocks}"
            )
        self.num_classes = num_classes
        self.num_filters = num_filters
        self.warp_config = warp
        self.blocks = nn.ModuleList(
            conv_block(1 if i == 0 else num_filters, num_filters) for i in range(num_blocks)
        )
        self.warps: nn.ModuleList | None = None
        self.warp_head: nn.Linear | None = None
        if warp is not None:
            self.warps = nn.ModuleList()
            for _ in range(num_blocks):
                layers, c_in = [], num_filters
                for j in range(warp.layers):
                    c_out = num_filters if j == warp.layers - 1 else warp.filters
                    layers.append(
                        WarpLayer(c_in, c_out, warp.residual, warp.batch_norm, warp.activation)
                    )
                    c_in = c_out
                self.warps.append(nn.Sequential(*layers))
        if warp is not None and warp.final_head:
            self.head = nn.Linear(num_filters, num_filters)
            self.warp_head = nn.Linear(num_filters, num_classes)
        else:
            self.head = nn.Linear(num_filters, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W) -> (N, num_filters)``: blocks (and warp layers), global max-pooled.

        For 28x28 inputs the last block leaves 1x1 pixels, so the pooling is a reshape.
        """
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected images (N, 1, H, W), got {tuple(x.shape)}")
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.warps is not None:
                x = self.warps[i](x)
        return x.amax(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, 1, H, W)``."""
        h = self.head(self.features(x))
        return h if self.warp_head is None else self.warp_head(h)

    def adapt_modules(self) -> list[nn.Module]:
        """Task-adaptable modules: the conv blocks and the head."""
        return [*self.blocks, self.head]

    def warp_modules(self) -> list[nn.Module]:
        """Warp modules (empty for the plain classifier)."""
        mods: list[nn.Module] = [] if self.warps is None else list(self.warps)
        if self.warp_head is not None:
            mods.append(self.warp_head)
        return mods

    def reset_batch_norm(self) -> None:
        """Reset every batch-norm layer's running statistics (start of a task)."""
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()

    def init_adaptation(self) -> None:
        """Called by :meth:`warp_rl.Warp.init_adaptation` at the start of every task."""
        self.reset_batch_norm()

    def config(self) -> dict:
        """Constructor arguments (for checkpoints)."""
        return {
            "num_classes": self.num_classes,
            "num_filters": self.num_filters,
            "num_blocks": len(self.blocks),
            "warp": None if self.warp_config is None else asdict(self.warp_config),
        }

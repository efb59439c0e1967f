"""Small CIFAR-style ResNets used as the built-in example and in tests.

``resnet18_digits`` is the shipped example model: a ResNet-18 (2-2-2-2 basic
blocks) for 1-channel 32x32 inputs. ``resnet_bottleneck_tiny`` is a small
three-stage bottleneck ResNet used to exercise other code paths in tests.

Both models are ``torch.fx.symbolic_trace``-able: their forward passes contain
no data-dependent control flow. Attribute names (``conv1``, ``bn1``, ``relu``,
``layer1``.., ``avgpool``, ``fc``; per block ``conv1``, ``bn1``, ``conv2``,
``bn2``, ``shortcut``) are relied upon by other parts of the project.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "resnet18_digits",
    "resnet_bottleneck_tiny",
]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Builds a residual shortcut.

    Args:
        in_planes: Input channels.
        out_planes: Output channels.
        stride: Spatial stride of the block.

    Returns:
        An empty ``nn.Sequential`` (identity) when shapes match, otherwise a
        1x1 strided convolution followed by batch norm.
    """
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 style)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        """Initializes the block.

        Args:
            in_planes: Input channels.
            planes: Output channels.
            stride: Stride of the first convolution and of the shortcut.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        """Initializes the block.

        Args:
            in_planes: Input channels.
            planes: Bottleneck channels; the block outputs ``4 * planes``.
            stride: Stride of the 3x3 convolution and of the shortcut.
        """
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (no max-pool), residual stages, pool, fc."""

    def __init__(
        self,
        block: type[BasicBlock] | type[BottleneckBlock],
        num_blocks: list[int],
        width: int,
        num_classes: int = 10,
        in_channels: int = 1,
    ) -> None:
        """Initializes the network.

        Args:
            block: Residual block class (``BasicBlock`` or ``BottleneckBlock``).
            num_blocks: Number of blocks per stage; stage ``i`` has
                ``width * 2**i`` planes and stride 1 for the first stage, 2 after.
            width: Planes of the first stage (and of the stem).
            num_classes: Number of output logits.
            in_channels: Input image channels.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            layers = []
            for s in strides:
                layers.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(num_blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18_digits(width: int = 32, num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 1-channel 32x32 images (the built-in example model).

    Args:
        width: Channels of the first stage; stages have w, 2w, 4w, 8w channels.
        num_classes: Number of output logits.

    Returns:
        An untrained ``ResNet`` with four stages of two ``BasicBlock`` each.
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes, in_channels=1)


def resnet_bottleneck_tiny(width: int = 8, num_classes: int = 10) -> nn.Module:
    """A small three-stage bottleneck ResNet for 1-channel 32x32 images.

    Args:
        width: Bottleneck planes of the first stage; stage outputs are
            4w, 8w, 16w channels (expansion 4).
        num_classes: Number of output logits.

    Returns:
        An untrained ``ResNet`` with stages ``layer1``..``layer3`` of two
        ``BottleneckBlock`` each (the first with a projection shortcut, the
        second with an identity shortcut).
    """
    return ResNet(BottleneckBlock, [2, 2, 2], width, num_classes, in_channels=1)

"""Tiny blocks for the pruning tests (no torchvision): ResNet basic / bottleneck, MobileNetV2, VGG, conv head."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int = 1, expansion: int = 4) -> None:
        super().__init__()
        cout = width * expansion
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = conv_bn(width, cout, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear project (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def vgg_stack() -> nn.Sequential:
    return nn.Sequential(
        *conv_bn(3, 16), nn.ReLU(inplace=True), *conv_bn(16, 32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        *conv_bn(32, 32), nn.ReLU(inplace=True),
    )


class ConvHead(nn.Module):
    """conv (with bias) -> relu -> pool -> view-flatten -> fc1 -> relu -> dropout -> fc2 (logits)."""

    def __init__(self, cin: int = 16, width: int = 24, hidden: int = 40, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, width, 3, 1, 1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(width * 4, hidden)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class GroupedConvBlock(nn.Module):
    """conv -> grouped conv (groups=4) -> conv: the grouped conv and everything around it stay whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(8, 16)
        self.gconv, self.bn2 = conv_bn(16, 16, 3, groups=4)
        self.conv3 = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.conv3(torch.relu(self.bn2(self.gconv(x))))


class UnknownOpBlock(nn.Module):
    """conv -> channel flip (an op the analysis does not know) -> conv: conv1 must stay whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.flip(torch.relu(self.conv1(x)), [1]))


class ConcatBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


class SqueezeExcite(nn.Module):
    """conv -> BN -> ReLU -> x * sigmoid(fc2(relu(fc1(pool(x))))) -> conv: one group spanning conv and fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(8, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.se1 = nn.Conv2d(32, 8, 1)
        self.se2 = nn.Conv2d(8, 32, 1)
        self.conv2 = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(self.pool(x)))))
        return self.conv2(x * s)


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics, so that tests see non-trivial BN."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return module


# name -> (factory, input shape)
BLOCKS = {
    "basic": (lambda: BasicBlock(32, 32), (2, 32, 8, 8)),
    "basic_down": (lambda: BasicBlock(32, 64, 2), (2, 32, 8, 8)),
    "basic_pair": (lambda: nn.Sequential(BasicBlock(32, 32), BasicBlock(32, 32)), (2, 32, 8, 8)),
    "bottleneck": (lambda: Bottleneck(64, 16), (2, 64, 8, 8)),
    "bottleneck_down": (lambda: Bottleneck(64, 32, 2), (2, 64, 8, 8)),
    "mbv2_res": (lambda: InvertedResidual(32, 32, 1, 6), (2, 32, 8, 8)),
    "mbv2_s2": (lambda: InvertedResidual(16, 24, 2, 6), (2, 16, 8, 8)),
    "vgg": (vgg_stack, (2, 3, 8, 8)),
    "head": (ConvHead, (2, 16, 6, 6)),
}


class ManualHardswish(nn.Module):
    """conv -> BN -> x * relu6(x + 3) / 6 -> conv: a multiply whose operands are both in the group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(8, 20)
        self.conv2 = nn.Conv2d(20, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        return self.conv2(x * torch.nn.functional.relu6(x + 3) / 6)


class GroupedIntoAdd(nn.Module):
    """grouped conv and plain conv joined by an add: the plain conv's group is blocked by the grouped one."""

    def __init__(self) -> None:
        super().__init__()
        self.gconv = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.conv = nn.Conv2d(8, 16, 1)
        self.bn = nn.BatchNorm2d(16)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(self.gconv(x)) + self.conv(x)))


class SharedConv(nn.Module):
    """one conv applied twice: it cannot be shrunk for one call site only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(torch.relu(self.conv1(x)))))

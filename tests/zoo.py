"""Tiny model definitions for tests (no torchvision); all fx-traceable but ``ShapeBranchVGG`` and the two refused ones.

Every model runs in milliseconds on a 1x3x32x32 (or 1x1x32x32) input.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A 3x3 conv (no bias), batch norm and activation."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), act(inplace=True))


class TinyVGG(nn.Module):
    """VGG-style: conv-bn-relu stages with max pools, then flatten and a linear classifier."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (8, 8, 16, 16), num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(widths):
            layers += list(conv_bn_relu(cin, cout))
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(cin * 4, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1; residual when stride 1 and in == out."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


# (expansion, out channels, stride) per inverted residual block.
MOBILENET_CONFIG = ((1, 8, 1), (4, 12, 2), (4, 12, 1), (4, 16, 2), (4, 16, 1))


class TinyMobileNetV2(nn.Module):
    """MobileNetV2-style: a stem, inverted residuals (``features.1..``), a 1x1 conv, pooling, classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, 8, act=nn.ReLU6)]
        cin = 8
        for expand, cout, stride in MOBILENET_CONFIG:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers.append(nn.Sequential(nn.Conv2d(cin, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a shortcut (1x1 conv + BN when the shape changes)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 reduce, 3x3, 1x1 expand (x4), with a downsample shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, four stages (``layer1..layer4``), global pool, ``fc``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        width: int = 8,
        in_channels: int = 3,
        num_classes: int = 10,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        for i, count in enumerate(layers):
            planes = width * 2**i
            stage = []
            for j in range(count):
                stage.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(width: int = 8, in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """A CIFAR ResNet-18 (basic blocks, 2-2-2-2)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width, in_channels, num_classes)


def resnet_bottleneck(width: int = 4, in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """A tiny bottleneck ResNet (2-1-1 stages, expansion 4)."""
    return ResNet(Bottleneck, (2, 1, 1), width, in_channels, num_classes)


class InputSkipNet(nn.Module):
    """U-Net-like: the input skips to the head, so no cut is valid anywhere (one block)."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.down = conv_bn_relu(in_channels, 8, stride=2)
        self.mid = conv_bn_relu(8, 8)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(8 + in_channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.mid(self.down(x)))
        return self.head(torch.cat([y, x], dim=1))


class MidSkipNet(nn.Module):
    """A stem, then a region with a long skip (stem output reaches the head), so cuts exist only at the stem."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, 8)
        self.body = nn.Sequential(conv_bn_relu(8, 8), conv_bn_relu(8, 8))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head(torch.cat([self.body(s), s], dim=1))


class SharedWeightNet(nn.Module):
    """One parameter used by two functional convs in different blocks (``get_attr`` nodes in two blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(nn.functional.conv2d(x, self.weight, padding=1))
        x = torch.relu(nn.functional.conv2d(x, self.weight, padding=1))
        return x.mean((2, 3))


class DataDependentNet(nn.Module):
    """Control flow on tensor values: not traceable by ``torch.fx``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


class ShapeResidual(nn.Module):
    """conv-bn-relu with a skip that is added only when the shapes match (a branch on shapes)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = conv_bn_relu(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.shape == x.shape:
            return x + y
        return y


class ShapeBranchVGG(nn.Module):
    """VGG-style, with the control flow on the feature map's size that popular VGG ports have: ``torch.fx`` refuses
    it ("symbolically traced variables cannot be used as inputs to control flow")."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 16), nn.MaxPool2d(2), ShapeResidual(16), conv_bn_relu(16, 32), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.shape[-1] != 4 or x.size(-2) != 4:  # pool to 4x4 unless the input already gives 4x4
            x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.classifier(x.view(x.size(0), -1))


class BatchBranchNet(nn.Module):
    """Control flow on the batch size: refused (the engines' batch axis is dynamic)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            return self.conv(x)
        return -self.conv(x)


class DictOutputNet(nn.Module):
    """Returns a dict: refused (the outputs must be one tensor or a flat tuple of tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        return {"map": y, "mean": y.mean((2, 3))}


class TwoHeadNet(nn.Module):
    """A detector-shaped CNN: a conv trunk, then class logits and a box regression from shared pooled features.

    ``forward`` returns the tuple ``(logits (N, classes), box (N, 4), heatmap (N, 1, H/4, W/4))``, as detection and
    pose heads do; only the last block can carry it."""

    def __init__(self, in_channels: int = 1, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_channels, width)
        self.down1 = conv_bn_relu(width, 2 * width, stride=2)
        self.down2 = conv_bn_relu(2 * width, 4 * width, stride=2)
        self.mid = conv_bn_relu(4 * width, 4 * width)
        self.cls = nn.Linear(4 * width, classes)
        self.box = nn.Linear(4 * width, 4)
        self.heat = nn.Conv2d(4 * width, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.mid(self.down2(self.down1(self.stem(x))))
        pooled = f.mean((2, 3))
        return self.cls(pooled), torch.sigmoid(self.box(pooled)), self.heat(f)


class EarlyOutputNet(nn.Module):
    """Returns an early feature map next to the final one: every cut after it would carry two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.a = conv_bn_relu(1, 4)
        self.b = conv_bn_relu(4, 4)
        self.c = conv_bn_relu(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        early = self.a(x)
        return early, self.c(self.b(early))


class TwoInputNet(nn.Module):
    """Takes two tensors: not partitionable into single-input blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + y


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (so eval != train)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model

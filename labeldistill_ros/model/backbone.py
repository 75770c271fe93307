"""ResNet-18/34/50 image backbone in plain torch with torchvision's module names.

The state_dict keys are exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0/1``) minus the classifier ``fc``: a torchvision ImageNet checkpoint loads with
:meth:`ResNet.load_torchvision_state_dict` (which drops ``fc.*`` and loads strictly). Bottleneck blocks put
the stride on the 3x3 convolution (torchvision's "ResNet v1.5").
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .state_dict import state_dict_problems


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    """1x1 strided projection for the residual path (``downsample.0`` conv, ``downsample.1`` BN), or None."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs with identity/projection shortcut. ``(B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)``."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion. ``(B, in_ch, H, W) -> (B, 4*width, H/stride, W/stride)``."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_SPECS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """torchvision ResNet without ``avgpool``/``fc``; returns the four stage outputs.

    ``forward((B, 3, H, W)) -> [C2 (B, c0, H/4, W/4), C3 (H/8), C4 (H/16), C5 (H/32)]`` with
    ``out_channels`` = (64, 128, 256, 512) for depth 18/34 and (256, 512, 1024, 2048) for depth 50.
    """

    def __init__(self, depth: int = 50):
        super().__init__()
        if depth not in _SPECS:
            raise ValueError(f"ResNet depth {depth} is not supported; use one of {sorted(_SPECS)}")
        block, layers = _SPECS[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        self.out_channels: tuple[int, ...] = ()
        for i, n in enumerate(layers):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, width, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels += (in_ch,)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs

    def load_torchvision_state_dict(self, state_dict: dict[str, torch.Tensor] | str | Path,
                                    source: str | None = None) -> None:
        """Load a torchvision ``resnet{18,34,50}`` state_dict (or a path to a file saved with ``torch.save``).

        Accepts a plain state_dict or a dict holding it under ``"state_dict"`` (read with ``weights_only=True``).
        The classifier (``fc.*``) is dropped; every other key must match exactly, with equal shapes. Anything else
        raises ``ValueError`` naming the file (``source``) and the missing / unexpected / mis-shaped keys.
        """
        if not isinstance(state_dict, dict):
            source = source or str(state_dict)
            try:
                state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
            except FileNotFoundError as e:
                raise ValueError(f"{source}: no such torchvision ResNet state_dict file") from e
            except Exception as e:  # corrupted, truncated, not a torch file, pickled objects
                raise ValueError(f"{source}: cannot read a torchvision ResNet state_dict: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        source = source or "<state_dict>"
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
        if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
            raise ValueError(f"{source}: expected a torchvision ResNet state_dict (parameter name -> tensor), "
                             f"got {type(state_dict).__name__}")
        sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        problems = state_dict_problems(self.state_dict(), sd, "file", f"ResNet-{self.depth}", show=8)
        if problems:
            raise ValueError(f"{source} does not fit a torchvision ResNet-{self.depth} backbone (torchvision key "
                             f"names, e.g. 'conv1.weight', 'layer1.0.bn1.running_mean'; 'fc.*' ignored): "
                             + "; ".join(problems))
        self.load_state_dict(sd, strict=True)

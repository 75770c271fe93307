"""BEV encoder: ResNet-style trunk (BEVDepth's ``trunk``: stem kept, max-pool removed) + SECONDFPN neck."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .backbone import BasicBlock
from .necks import SECONDFPN


class BEVTrunk(nn.Module):
    """Stem 7x7 stride 2 -> BN -> ReLU, then stages of BasicBlocks with ``base * 2**i`` channels.

    ``forward((B, in_ch, H, W)) -> [x (B, in_ch, H, W), s_1 (B, base, H/(2 r_1), ...), s_2, ...]``, the input
    followed by every stage output (``r_i`` = product of the first i strides). With the default strides
    (1, 2, 2) the stages are at H/2, H/4, H/8.
    """

    def __init__(self, in_ch: int, base_ch: int, num_blocks: Sequence[int] = (2, 2, 2),
                 strides: Sequence[int] = (1, 2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, base_ch, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_ch)
        self.relu = nn.ReLU(inplace=True)
        stages, ch = [], base_ch
        self.out_channels = [in_ch]
        for i, (n, s) in enumerate(zip(num_blocks, strides)):
            out = base_ch * 2**i
            stages.append(nn.Sequential(*[BasicBlock(ch if j == 0 else out, out, s if j == 0 else 1) for j in range(n)]))
            ch = out
            self.out_channels.append(out)
        self.stages = nn.ModuleList(stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class BEVEncoder(nn.Module):
    """Trunk + neck. ``forward((B, in_ch, H, W)) -> (feature (B, neck_ch * (1 + stages), H, W), trunk outputs)``.

    The neck brings [input, stage outputs] back to (H, W) with up-strides [1, 2 r_1, 2 r_2, ...].
    """

    def __init__(self, in_ch: int, base_ch: int, num_blocks: Sequence[int], strides: Sequence[int], neck_ch: int):
        super().__init__()
        self.trunk = BEVTrunk(in_ch, base_ch, num_blocks, strides)
        ups, r = [1], 2
        for s in strides:
            r *= s
            ups.append(r)
        self.neck = SECONDFPN(self.trunk.out_channels, [neck_ch] * len(ups), ups)
        self.out_channels = self.neck.out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = self.trunk(x)
        return self.neck(outs), outs

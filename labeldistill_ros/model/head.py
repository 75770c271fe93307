"""CenterPoint detection head with one SeparateHead per task group (BEVDepth/CenterPoint ``CenterHead``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

REG_BRANCHES: tuple[tuple[str, int], ...] = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))
"""Regression branches and channels, in the order of the 10-d box code: sub-cell offset (x, y) in cells,
centre z (m), log(l, w, h), (sin yaw, cos yaw), (vx, vy) m/s."""


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SeparateHead(nn.Module):
    """Per branch: conv3x3-BN-ReLU then conv3x3 to the branch's channels.

    ``forward((B, in_ch, H, W)) -> {"heatmap": (B, num_classes, H, W) logits, "reg": (B, 2, H, W),
    "height": (B, 1, ...), "dim": (B, 3, ...), "rot": (B, 2, ...), "vel": (B, 2, ...)}``.
    """

    def __init__(self, in_ch: int, head_ch: int, num_classes: int, heatmap_init_bias: float = -2.19):
        super().__init__()
        self.branches = nn.ModuleDict()
        for name, out in (("heatmap", num_classes),) + REG_BRANCHES:
            self.branches[name] = nn.Sequential(conv_bn_relu(in_ch, head_ch), nn.Conv2d(head_ch, out, 3, padding=1))
        nn.init.constant_(self.branches["heatmap"][-1].bias, heatmap_init_bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: branch(x) for name, branch in self.branches.items()}


class CenterHead(nn.Module):
    """Shared conv3x3-BN-ReLU, then one :class:`SeparateHead` per task group.

    ``forward((B, in_ch, H, W)) -> [dict per task]`` (see :class:`SeparateHead`); task t's heatmap channels
    are the classes of ``task_groups[t]`` in order.
    """

    def __init__(self, in_ch: int, share_ch: int, head_ch: int, task_groups: Sequence[Sequence[str]],
                 heatmap_init_bias: float = -2.19):
        super().__init__()
        self.task_groups = tuple(tuple(g) for g in task_groups)
        self.shared_conv = conv_bn_relu(in_ch, share_ch)
        self.task_heads = nn.ModuleList(
            SeparateHead(share_ch, head_ch, len(g), heatmap_init_bias) for g in self.task_groups
        )

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        x = self.shared_conv(x)
        return [head(x) for head in self.task_heads]

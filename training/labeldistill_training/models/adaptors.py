"""LabelDistill feature partitioning and adaptors (methods.md §2.5).

Each distilled student map (the BEV input of the trunk, and the trunk's first stage output) is split on channels
into three parts: part 1 -> *label* adaptor, part 2 -> *LiDAR* adaptor, part 3 -> not distilled (student-only).
The reference splits into equal thirds (750 -> 250 | 250 | 250, 300 -> 100 | 100 | 100); when C is not divisible
by 3 the first two parts get ``C // 3`` channels and the third the rest.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from labeldistill_training.models.label_encoder import BasicBlock


def partition_slices(channels: int, fractions: Sequence[float] = (1 / 3, 1 / 3)) -> tuple[slice, slice, slice]:
    """Channel slices ``(label, lidar, student_only)`` of a ``channels``-wide map.

    ``fractions``: the label and LiDAR shares (reference thirds); each part gets ``int(channels * share)``
    channels (at least 1), the student-only part the rest.
    """
    a = max(1, math.floor(channels * fractions[0] + 1e-6))
    b = max(1, math.floor(channels * fractions[1] + 1e-6))
    if a + b > channels:
        raise ValueError(f"partition of {channels} channels into {a} + {b} leaves nothing")
    return slice(0, a), slice(a, a + b), slice(a + b, channels)


class Adaptor(nn.Module):
    """One adaptor level: ``Conv3x3(c_in -> c_out, replicate padding) - BN - ReLU - BasicBlock(c_out)``.

    Forward: ``(B, c_in, H, W)`` -> ``(B, c_out, H, W)`` (same resolution; the student and teacher grids match).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="replicate",
                                            bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.block = BasicBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x))


class MultiLevelAdaptor(nn.Module):
    """A list of :class:`Adaptor`, one per distilled level (k = 0: BEV input, k = 1: first trunk stage)."""

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(Adaptor(ci, co) for ci, co in zip(in_channels, out_channels))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [a(f) for a, f in zip(self.levels, feats)]

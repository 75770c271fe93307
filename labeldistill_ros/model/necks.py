"""SECONDFPN: bring several feature maps to one resolution and concatenate them (mmdet3d's SECONDFPN)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SECONDFPN(nn.Module):
    """Per level: (de)conv with kernel = stride, BN (eps 1e-3, momentum 0.01), ReLU; then concat on channels.

    Level i is upsampled by ``upsample_strides[i]`` with a transposed convolution when the stride is >= 1, or
    downsampled with a strided convolution of stride ``1 / upsample_strides[i]`` when it is < 1.

    ``forward([x_i (B, in_channels[i], H_i, W_i)]) -> (B, sum(out_channels), H_i * s_i, W_i * s_i)``; every level
    must land on the same size.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], upsample_strides: Sequence[float]):
        super().__init__()
        if not len(in_channels) == len(out_channels) == len(upsample_strides):
            raise ValueError("SECONDFPN: in_channels, out_channels and upsample_strides need the same length")
        blocks = []
        for c_in, c_out, s in zip(in_channels, out_channels, upsample_strides):
            if s >= 1:
                k = int(round(s))
                conv = nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=False)
            else:
                k = int(round(1 / s))
                conv = nn.Conv2d(c_in, c_out, k, stride=k, bias=False)
            blocks.append(nn.Sequential(conv, nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)))
        self.deblocks = nn.ModuleList(blocks)
        self.out_channels = int(sum(out_channels))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([block(x) for block, x in zip(self.deblocks, feats)], dim=1)

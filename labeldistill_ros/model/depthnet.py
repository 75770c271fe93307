"""BEVDepth's camera-aware DepthNet: per-camera depth distribution and context features.

The 27-d camera vector (:func:`labeldistill_ros.geometry.camera_vector_27`: intrinsics, image augmentation,
BEV augmentation, camera-to-ego) goes through BatchNorm1d and two MLPs that produce squeeze-and-excitation
gates for a context branch and a depth branch:

    x   = ReLU(BN(conv3x3(feat)))                               (BN, mid, h, w)
    ctx = conv1x1(x * sigmoid(SE_ctx(MLP_ctx(cam))))            (BN, C_ctx, h, w)
    dep = x * sigmoid(SE_depth(MLP_depth(cam)))
          -> BasicBlock x num_res_blocks -> ASPP -> deformable 3x3 (groups 4) -> conv1x1   (BN, D, h, w) logits

The deformable convolution (mmcv DCNv1, deform_groups 1, zero-initialised offsets) is written with
``grid_sample`` so it needs no custom op and exports.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BasicBlock


class Mlp(nn.Module):
    """Linear - ReLU - Linear. ``(N, in_ch) -> (N, out_ch)``."""

    def __init__(self, in_ch: int, hidden: int, out_ch: int):
        super().__init__()
        self.fc1 = nn.Linear(in_ch, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SELayer(nn.Module):
    """Gate ``x (N, C, h, w)`` by ``sigmoid(conv(relu(conv(x_se (N, C, 1, 1)))))`` (BEVDepth's SELayer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, x_se: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv_expand(self.act(self.conv_reduce(x_se))))


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (dilations 1, 6, 12, 18 + image pooling), fused by conv1x1-BN-ReLU and
    dropout 0.5. ``(N, in_ch, h, w) -> (N, mid, h, w)``."""

    def __init__(self, in_ch: int, mid: int):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_ch, mid, 1)] + [ConvBNReLU(in_ch, mid, 3, padding=d, dilation=d) for d in (6, 12, 18)]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_ch, mid, 1))
        self.fuse = ConvBNReLU(5 * mid, mid, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.dropout(self.fuse(torch.cat([b(x) for b in self.branches] + [pooled], dim=1)))


class DeformConv2d(nn.Module):
    """3x3 deformable convolution v1 (mmcv ``DCN`` with ``deform_groups=1``), stride 1, padding 1, no bias.

    Offsets come from a zero-initialised 3x3 conv (18 channels: (dy, dx) per kernel tap, row-major taps), so
    at initialisation this is exactly ``conv2d(x, weight, padding=1, groups=groups)``. Sampling is bilinear
    with zeros outside the map. ``(N, C, h, w) -> (N, out_ch, h, w)``.
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int = 1):
        super().__init__()
        if in_ch % groups or out_ch % groups:
            raise ValueError(f"DeformConv2d: channels {in_ch}->{out_ch} not divisible by groups {groups}")
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch // groups, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.conv_offset = nn.Conv2d(in_ch, 18, 3, padding=1)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        offset = self.conv_offset(x).reshape(n, 9, 2, h, w)
        tap = torch.arange(9, device=x.device)
        ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1) + (tap // 3 - 1).view(1, 9, 1, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w) + (tap % 3 - 1).view(1, 9, 1, 1)
        py = ys + offset[:, :, 0]  # (n, 9, h, w) sample rows
        px = xs + offset[:, :, 1]
        # align_corners=True: -1/+1 are the centres of the first/last pixel
        grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1)
        sampled = F.grid_sample(x, grid.reshape(n, 9 * h, w, 2), mode="bilinear", padding_mode="zeros",
                                align_corners=True)  # (n, c, 9h, w)
        cols = sampled.reshape(n, c * 9, h, w)  # channel-major, then tap: matches weight
        weight = self.weight.reshape(self.weight.shape[0], -1, 1, 1)
        return F.conv2d(cols, weight, groups=self.groups)


class DepthNet(nn.Module):
    """Camera-aware depth and context prediction (BEVDepth ``DepthNet``).

    ``forward(feat (BN, in_ch, h, w), cam_vec (BN, 27)) -> (depth_logits (BN, num_bins, h, w),
    context (BN, context_ch, h, w))``.
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        context_ch: int,
        num_bins: int,
        num_res_blocks: int = 3,
        use_aspp: bool = True,
        use_dcn: bool = True,
    ):
        super().__init__()
        self.reduce_conv = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1), nn.BatchNorm2d(mid_ch), nn.ReLU(inplace=True)
        )
        self.bn = nn.BatchNorm1d(27)
        self.context_mlp = Mlp(27, mid_ch, mid_ch)
        self.context_se = SELayer(mid_ch)
        self.context_conv = nn.Conv2d(mid_ch, context_ch, 1)
        self.depth_mlp = Mlp(27, mid_ch, mid_ch)
        self.depth_se = SELayer(mid_ch)
        layers: list[nn.Module] = [BasicBlock(mid_ch, mid_ch) for _ in range(num_res_blocks)]
        if use_aspp:
            layers.append(ASPP(mid_ch, mid_ch))
        if use_dcn:
            layers.append(DeformConv2d(mid_ch, mid_ch, groups=4))
        layers.append(nn.Conv2d(mid_ch, num_bins, 1))
        self.depth_conv = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor, cam_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.bn(cam_vec.to(feat.dtype))
        x = self.reduce_conv(feat)
        context = self.context_conv(self.context_se(x, self.context_mlp(cam)[..., None, None]))
        depth = self.depth_conv(self.depth_se(x, self.depth_mlp(cam)[..., None, None]))
        return depth, context

"""LiDAR teacher in the student's conventions (methods.md §2.2, §7.3): same ego frame, box layout, BEV grid,
task groups and BEV augmentation as the camera student, and the *same* CenterPoint head class.

Pipeline (shapes for the reference grid, 128 x 128 cells of 0.8 m over +-51.2 m)::

    points (B, N, 5) x,y,z,intensity,dt in the key ego frame (padding rows: x = -999 -> outside the range)
      -> PillarEncoder: dynamic pillars/voxels, PointNet (Linear-BN-ReLU, max) -> dense (B, C_p, Hp, Wp)
      -> BevDownsampler: strided conv stages to the head grid          -> "encoder"  (B, 256, 128, 128)
      -> SECONDBackbone: [128 @ 128x128, 256 @ 64x64]                   -> "backbone" (distilled features)
      -> SECONDFPN: [128 -> 256 (x1), 256 -> 256 (x2 deconv)] concat     -> "neck"     (B, 512, 128, 128)
      -> CenterHead (the student's head class)                          -> "head_outputs"

Deviation from the reference (config switch ``teacher.encoder``): the reference voxelises at 0.1 x 0.1 x 0.2 m
with a mean VFE and an spconv SparseEncoder (4 sparse stages, 256 ch after height compression). Without spconv
this uses plain-torch *dynamic* voxelisation (no per-voxel point cap) and dense 2D convolutions: ``pillar``
(PointPillars PFN on vertical columns) or ``voxel`` (mean VFE on ``z_bins`` height slices stacked into channels,
the dense analogue of SECOND's height compression). spconv is not used even when importable. BatchNorm momentum
is PyTorch's 0.1 (mmdet3d uses 0.01, whose running statistics lag far behind in short runs).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout, eps=1e-3, momentum=0.1), nn.ReLU(inplace=True))


class PillarEncoder(nn.Module):
    """Dynamic pillar (or voxel-slice) encoder in plain torch.

    Args:
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres in the ego frame; points outside are
            dropped (this also removes the -999 padding).
        pillar_size: ``(dx, dy)`` metres of a pillar.
        in_features: point features (5: x, y, z, intensity, dt).
        out_channels: pillar feature channels C_p.
        mode: ``"pillar"`` (PFN: point features + offsets to pillar mean and centre -> Linear-BN-ReLU -> max)
            or ``"voxel"`` (mean of the raw point features per voxel in ``z_bins`` height slices, then a 1x1
            conv over the stacked slices).
        z_bins: height slices in ``"voxel"`` mode.
    Forward: ``points (B, N, F)`` -> ``(B, out_channels, Hp, Wp)`` with Hp = (y_max - y_min) / dy (rows = y).
    """

    def __init__(self, point_range: Sequence[float], pillar_size: Sequence[float], in_features: int = 5,
                 out_channels: int = 64, mode: str = "pillar", z_bins: int = 8) -> None:
        super().__init__()
        if mode not in ("pillar", "voxel"):
            raise ValueError(f"teacher encoder mode must be 'pillar' or 'voxel', got {mode!r}")
        self.range = [float(v) for v in point_range]
        self.size = [float(v) for v in pillar_size]
        self.Wp = int(round((self.range[3] - self.range[0]) / self.size[0]))
        self.Hp = int(round((self.range[4] - self.range[1]) / self.size[1]))
        self.mode = mode
        self.z_bins = z_bins if mode == "voxel" else 1
        self.in_features = in_features
        self.out_channels = out_channels
        if mode == "pillar":
            self.pfn = nn.Linear(in_features + 5, out_channels, bias=False)
            self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.1)
        else:
            self.proj = nn.Sequential(nn.Conv2d(in_features * self.z_bins, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.1),
                                      nn.ReLU(inplace=True))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        B, N, Fe = points.shape
        x_min, y_min, z_min, x_max, y_max, z_max = self.range
        pts = points.reshape(B * N, Fe).float()
        bidx = torch.arange(B, device=points.device).repeat_interleave(N)
        keep = (pts[:, 0] >= x_min) & (pts[:, 0] < x_max) & (pts[:, 1] >= y_min) & (pts[:, 1] < y_max) & \
               (pts[:, 2] >= z_min) & (pts[:, 2] < z_max)
        pts, bidx = pts[keep], bidx[keep]
        ix = ((pts[:, 0] - x_min) / self.size[0]).long().clamp(0, self.Wp - 1)
        iy = ((pts[:, 1] - y_min) / self.size[1]).long().clamp(0, self.Hp - 1)
        if self.mode == "pillar":
            lin = (bidx * self.Hp + iy) * self.Wp + ix
            uniq, inv = torch.unique(lin, return_inverse=True)
            P = uniq.numel()
            cnt = torch.zeros(P, device=pts.device).index_add_(0, inv, torch.ones_like(inv, dtype=torch.float))
            mean = torch.zeros(P, 3, device=pts.device).index_add_(0, inv, pts[:, :3]) / cnt[:, None]
            cx = (ix.float() + 0.5) * self.size[0] + x_min
            cy = (iy.float() + 0.5) * self.size[1] + y_min
            feat = torch.cat([pts, pts[:, :3] - mean[inv], (pts[:, 0] - cx)[:, None], (pts[:, 1] - cy)[:, None]], 1)
            feat = F.relu(self.norm(self.pfn(feat)))
            pooled = torch.zeros(P, self.out_channels, device=pts.device, dtype=feat.dtype)
            pooled = pooled.scatter_reduce(0, inv[:, None].expand_as(feat), feat, reduce="amax", include_self=False)
            canvas = torch.zeros(B * self.Hp * self.Wp, self.out_channels, device=pts.device, dtype=feat.dtype)
            canvas[uniq] = pooled
            return canvas.view(B, self.Hp, self.Wp, -1).permute(0, 3, 1, 2).contiguous()
        iz = ((pts[:, 2] - z_min) / (z_max - z_min) * self.z_bins).long().clamp(0, self.z_bins - 1)
        lin = ((bidx * self.z_bins + iz) * self.Hp + iy) * self.Wp + ix
        total = B * self.z_bins * self.Hp * self.Wp
        s = torch.zeros(total, Fe, device=pts.device).index_add_(0, lin, pts)
        cnt = torch.zeros(total, device=pts.device).index_add_(0, lin, torch.ones_like(pts[:, 0]))
        mean = s / cnt.clamp(min=1)[:, None]
        grid = mean.view(B, self.z_bins, self.Hp, self.Wp, Fe).permute(0, 1, 4, 2, 3)
        return self.proj(grid.reshape(B, self.z_bins * Fe, self.Hp, self.Wp))


class BevDownsampler(nn.Module):
    """Dense stand-in for the sparse middle encoder: ``log2(stride)`` stages (conv3x3 stride 2 + ``depth`` convs),
    then a 1x1 projection to ``out_channels``.

    Forward: ``(B, C_in, Hp, Wp)`` -> ``(B, out_channels, Hp / stride, Wp / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, stage_channels: Sequence[int] = (),
                 depth: int = 1) -> None:
        super().__init__()
        n = int(round(torch.log2(torch.tensor(float(stride))).item()))
        if 2 ** n != stride:
            raise ValueError(f"teacher pillar grid / head grid must be a power of two, got {stride}")
        chans = list(stage_channels) or [min(out_channels, in_channels * 2 ** (i + 1)) for i in range(n)]
        if len(chans) != n:
            raise ValueError(f"teacher.stage_channels needs {n} entries for stride {stride}, got {len(chans)}")
        layers: list[nn.Module] = []
        c = in_channels
        for co in chans:
            layers.append(_conv_bn_relu(c, co, stride=2))
            layers += [_conv_bn_relu(co, co) for _ in range(depth)]
            c = co
        layers.append(_conv_bn_relu(c, out_channels, k=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SECONDBackbone(nn.Module):
    """SECOND 2D backbone: per stage a strided conv3x3 then ``layer_nums[i]`` conv3x3 (BN eps 1e-3, ReLU).

    Reference: in 256 @ 128x128 -> ``[128 @ 128x128, 256 @ 64x64]`` (out_channels (128, 256), layer_nums (5, 5),
    strides (1, 2)). Forward returns the list of stage outputs (the features LabelDistill distils).
    """

    def __init__(self, in_channels: int = 256, out_channels: Sequence[int] = (128, 256),
                 layer_nums: Sequence[int] = (5, 5), strides: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        c = in_channels
        for co, n, s in zip(out_channels, layer_nums, strides):
            layers = [_conv_bn_relu(c, co, stride=s)] + [_conv_bn_relu(co, co) for _ in range(n)]
            self.stages.append(nn.Sequential(*layers))
            c = co

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    """SECONDFPN: each level brought to the finest resolution by a (transposed) conv with kernel = stride, BN,
    ReLU, then concatenated. Reference: in (128, 256), out (256, 256), upsample strides (1, 2) -> 512 @ 128x128."""

    def __init__(self, in_channels: Sequence[int] = (128, 256), out_channels: Sequence[int] = (256, 256),
                 upsample_strides: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        self.deblocks = nn.ModuleList()
        for ci, co, s in zip(in_channels, out_channels, upsample_strides):
            self.deblocks.append(nn.Sequential(nn.ConvTranspose2d(ci, co, s, stride=s, bias=False),
                                               nn.BatchNorm2d(co, eps=1e-3, momentum=0.1), nn.ReLU(inplace=True)))
        self.out_channels = int(sum(out_channels))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([d(f) for d, f in zip(self.deblocks, feats)], dim=1)


class LidarTeacher(nn.Module):
    """CenterPoint-style LiDAR teacher. All parts are explicit constructor arguments.

    Args:
        encoder: :class:`PillarEncoder`. downsampler: :class:`BevDownsampler` (to the head grid).
        backbone: :class:`SECONDBackbone`. neck: :class:`SECONDFPN`.
        head: a CenterPoint head module (the student's class) taking the neck output and returning a list
            (one per task group) of dicts with ``heatmap, reg, height, dim, rot, vel`` maps.
    Forward: ``points (B, N, 5)`` in the key ego frame after BEV augmentation -> dict with ``encoder``
    (B, C_enc, H, W), ``backbone`` (list of 2), ``neck`` (B, C_neck, H, W) and ``head_outputs``.
    """

    def __init__(self, encoder: PillarEncoder, downsampler: BevDownsampler, backbone: SECONDBackbone,
                 neck: SECONDFPN, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.downsampler = downsampler
        self.backbone = backbone
        self.neck = neck
        self.head = head

    def forward_neck_head(self, backbone_feats: Sequence[torch.Tensor]):
        """Neck + head on given backbone-level features (the label-encoder stage feeds label features here)."""
        neck = self.neck(backbone_feats)
        return neck, self.head(neck)

    def forward(self, points: torch.Tensor) -> dict:
        enc = self.downsampler(self.encoder(points))
        feats = self.backbone(enc)
        neck, head_out = self.forward_neck_head(feats)
        return {"encoder": enc, "backbone": feats, "neck": neck, "head_outputs": head_out}

"""LabelDistill's label encoder (methods.md §2.3): GT boxes rasterised onto the BEV grid and embedded into the
feature space of the LiDAR teacher's SECOND backbone (an approximate inverse of the frozen teacher neck + head).

Rasterisation (reference ``gen_labelinput``), per GT box on the teacher/student BEV grid (row = y, column = x):

1. centre in cells ``(cx, cy) = ((x - x_min) / cell, (y - y_min) / cell)``;
2. a rotated rectangle of ``footprint_scale * l`` along the heading by ``footprint_scale * w`` across it
   (reference: 0.5, i.e. a quarter of the box area, because the code halves twice), corners truncated to int,
   filled boundary-inclusively like ``skimage.draw.polygon`` and the filled indices clipped to the grid (boxes
   straddling the border smear onto the border cells, as in the reference);
3. every filled cell gets ``mask = 1``, ``label = one_hot(class, 10)`` and ``box = raw 9-d box`` (metres,
   radians, m/s; no normalisation). Later boxes overwrite earlier ones; empty cells are zero.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from labeldistill_ros.model.config import BEVGridConfig


def _cells_in_polygon(poly: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Even-odd point-in-polygon with boundary points counted inside. ``poly (V, 2)`` (col, row) vertices;
    ``cols, rows (P,)`` query points -> ``(P,)`` bool."""
    x, y = cols.float(), rows.float()
    inside = torch.zeros_like(x, dtype=torch.bool)
    on_edge = torch.zeros_like(inside)
    V = poly.shape[0]
    for i in range(V):
        xi, yi = poly[i, 0].float(), poly[i, 1].float()
        xj, yj = poly[i - 1, 0].float(), poly[i - 1, 1].float()
        crosses = ((yi <= y) & (y < yj)) | ((yj <= y) & (y < yi))
        dy = yj - yi
        x_at = (xj - xi) * (y - yi) / (dy if float(dy) != 0 else 1.0) + xi
        inside ^= crosses & (x < x_at)
        cross = (xj - xi) * (y - yi) - (yj - yi) * (x - xi)
        within = (x >= torch.minimum(xi, xj)) & (x <= torch.maximum(xi, xj)) & \
                 (y >= torch.minimum(yi, yj)) & (y <= torch.maximum(yi, yj))
        on_edge |= (cross == 0) & within
    return inside | on_edge


def rasterize_labels(boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGridConfig, num_classes: int = 10,
                     footprint_scale: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rasterise one sample's GT (methods.md §2.3).

    Args:
        boxes: ``(N, 9)`` ego boxes (x, y, z, l, w, h, yaw, vx, vy); NaN velocities are written as 0.
        labels: ``(N,)`` global class ids.
        grid: the BEV grid.
        footprint_scale: fraction of l and w covered by the rectangle (0.5 reference; 1.0 = full box).
    Returns:
        ``box_map (9, H, W)``, ``label_map (num_classes, H, W)``, ``mask (H, W)`` float tensors.
    """
    H, W = grid.ny, grid.nx
    dev = boxes.device
    box_map = torch.zeros(9, H, W, device=dev)
    label_map = torch.zeros(num_classes, H, W, device=dev)
    mask = torch.zeros(H, W, device=dev)
    boxes = torch.nan_to_num(boxes[:, :9].float())
    # corner signs in cycle order, (along heading, across heading)
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]], device=dev)
    for j in range(boxes.shape[0]):
        bx = boxes[j]
        cx = (bx[0] - grid.x_min) / grid.cell
        cy = (bx[1] - grid.y_min) / grid.cell
        half_l = bx[3] / grid.cell * footprint_scale / 2
        half_w = bx[4] / grid.cell * footprint_scale / 2
        c, s = torch.cos(bx[6]), torch.sin(bx[6])
        a = signs[:, 0] * half_l
        b = signs[:, 1] * half_w
        poly = torch.stack([cx + a * c - b * s, cy + a * s + b * c], dim=1).trunc().long()  # (4, 2) col,row
        c0, c1 = int(poly[:, 0].min()), int(poly[:, 0].max())
        r0, r1 = int(poly[:, 1].min()), int(poly[:, 1].max())
        rr, cc = torch.meshgrid(torch.arange(r0, r1 + 1, device=dev), torch.arange(c0, c1 + 1, device=dev),
                                indexing="ij")
        rr, cc = rr.flatten(), cc.flatten()
        keep = _cells_in_polygon(poly, cc, rr)
        rr = rr[keep].clamp(0, H - 1)
        cc = cc[keep].clamp(0, W - 1)
        if rr.numel() == 0:
            continue
        mask[rr, cc] = 1.0
        label_map[:, rr, cc] = 0.0
        label_map[int(labels[j]), rr, cc] = 1.0
        box_map[:, rr, cc] = bx[:, None]
    return box_map, label_map, mask


def rasterize_batch(gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor], grid: BEVGridConfig,
                    num_classes: int = 10, footprint_scale: float = 0.5):
    """Batched :func:`rasterize_labels` -> ``box (B, 9, H, W)``, ``label (B, C, H, W)``, ``mask (B, H, W)``."""
    outs = [rasterize_labels(b, l, grid, num_classes, footprint_scale) for b, l in zip(gt_boxes, gt_labels)]
    return tuple(torch.stack(t) for t in zip(*outs))


class BasicBlock(nn.Module):
    """ResNet basic block ``conv3x3-BN-ReLU-conv3x3-BN (+identity) -ReLU`` with equal in/out channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


def _mlp(cin: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden))


class LabelEncoder(nn.Module):
    """``LabelBackbone`` (methods.md §2.3): per-cell MLPs on the raw box vector and the one-hot class, a
    LayerNorm, a residual block, and one strided conv head per teacher backbone level.

    Args:
        out_channels: channels of the teacher SECOND outputs ((128, 256) reference).
        strides: their strides relative to the BEV grid ((1, 2)).
        grid_hw: ``(H, W)`` of the BEV grid (the LayerNorm([C, H, W]) heads need it; 128 x 128 reference).
        hidden: MLP width (256). box_features (9), label_features (10).
    Forward: ``box_map (B, 9, H, W)``, ``label_map (B, 10, H, W)`` -> list of ``(B, out_channels[k], H/s_k, W/s_k)``.
    The mask is not an input (the reference ignores it).
    """

    def __init__(self, out_channels: Sequence[int] = (128, 256), strides: Sequence[int] = (1, 2),
                 grid_hw: tuple[int, int] = (128, 128), hidden: int = 256, box_features: int = 9,
                 label_features: int = 10) -> None:
        super().__init__()
        self.mlp_box = _mlp(box_features, hidden)
        self.mlp_label = _mlp(label_features, hidden)
        self.mlp2 = _mlp(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.block = BasicBlock(hidden)
        H, W = grid_hw
        self.heads = nn.ModuleList()
        for c, s in zip(out_channels, strides):
            self.heads.append(nn.Sequential(
                nn.Conv2d(hidden, c, 3, stride=s, padding=1, padding_mode="replicate"),
                nn.LayerNorm([c, (H + s - 1) // s, (W + s - 1) // s]),
                nn.ReLU(inplace=True)))

    def forward(self, box_map: torch.Tensor, label_map: torch.Tensor) -> list[torch.Tensor]:
        B, _, H, W = box_map.shape
        tb = box_map.flatten(2).transpose(1, 2)  # (B, HW, 9)
        tl = label_map.flatten(2).transpose(1, 2)
        s = self.norm(self.mlp2(self.mlp_box(tb) + self.mlp_label(tl)))
        x = self.block(s.transpose(1, 2).reshape(B, -1, H, W))
        return [head(x) for head in self.heads]

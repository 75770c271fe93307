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

All boxes of a batch are rasterised together (:func:`rasterize_batch`: batched tensor ops, one host sync).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from labeldistill_ros.model.config import BEVGridConfig


def _cells_in_polygon(poly: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Even-odd point-in-polygon with boundary points counted inside, for many polygons at once.

    ``poly (N, V, 2)`` integer (col, row) vertices; ``cols, rows (N, P)`` integer query points -> ``(N, P)`` bool
    (exact: every value is a small integer in float32)."""
    x, y = cols.float(), rows.float()
    inside = torch.zeros_like(x, dtype=torch.bool)
    on_edge = torch.zeros_like(inside)
    V = poly.shape[1]
    for i in range(V):  # the polygon's edges (4), each for all polygons and points
        xi, yi = poly[:, i, 0:1].float(), poly[:, i, 1:2].float()
        xj, yj = poly[:, i - 1, 0:1].float(), poly[:, i - 1, 1:2].float()
        crosses = ((yi <= y) & (y < yj)) | ((yj <= y) & (y < yi))
        dy = yj - yi
        x_at = (xj - xi) * (y - yi) / torch.where(dy != 0, dy, torch.ones_like(dy)) + xi
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
        grid: the BEV grid (square cells).
        footprint_scale: fraction of l and w covered by the rectangle (0.5 reference; 1.0 = full box).
    Returns:
        ``box_map (9, H, W)``, ``label_map (num_classes, H, W)``, ``mask (H, W)`` float tensors.
    """
    box_map, label_map, mask = rasterize_batch([boxes], [labels], grid, num_classes, footprint_scale)
    return box_map[0], label_map[0], mask[0]


def rasterize_batch(gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor], grid: BEVGridConfig,
                    num_classes: int = 10, footprint_scale: float = 0.5):
    """:func:`rasterize_labels` of every sample -> ``box (B, 9, H, W)``, ``label (B, C, H, W)``, ``mask (B, H, W)``.

    All boxes of the batch at once: the truncated footprint polygons, a window of cells per box (the largest
    polygon's bounding box: the one host sync), the point-in-polygon test, the clip to the grid, and per cell the
    last box (in GT order) that covers it, whose values the cell takes (the reference's overwrite order)."""
    H, W, B = grid.ny, grid.nx, len(gt_boxes)
    dev = gt_boxes[0].device if B else torch.device("cpu")
    boxes = torch.cat([torch.nan_to_num(b[:, :9].float()) for b in gt_boxes] + [torch.zeros(0, 9, device=dev)])
    labels = torch.cat([lb.long().to(dev) for lb in gt_labels] + [torch.zeros(0, dtype=torch.long, device=dev)])
    sample = torch.cat([torch.full((int(b.shape[0]),), i, dtype=torch.long, device=dev)
                        for i, b in enumerate(gt_boxes)] + [torch.zeros(0, dtype=torch.long, device=dev)])
    n = int(boxes.shape[0])
    winner = torch.full((B * H * W + 1,), -1, dtype=torch.long, device=dev)  # last slot: dropped cells
    if n:
        cx = (boxes[:, 0] - grid.x_min) / grid.cell
        cy = (boxes[:, 1] - grid.y_min) / grid.cell
        half_l = (boxes[:, 3] / grid.cell * footprint_scale / 2)[:, None]
        half_w = (boxes[:, 4] / grid.cell * footprint_scale / 2)[:, None]
        c, s = torch.cos(boxes[:, 6])[:, None], torch.sin(boxes[:, 6])[:, None]
        # corner signs in cycle order, (along heading, across heading)
        a = torch.tensor([1.0, 1.0, -1.0, -1.0], device=dev) * half_l
        b = torch.tensor([1.0, -1.0, -1.0, 1.0], device=dev) * half_w
        poly = torch.stack([cx[:, None] + a * c - b * s, cy[:, None] + a * s + b * c], dim=2).trunc().long()
        lo, hi = poly.amin(1), poly.amax(1)  # (N, 2) (col, row) bounding boxes
        ext = int((hi - lo).amax()) + 1  # the one sync: window side
        off = torch.arange(ext, device=dev)
        cc = (lo[:, 0:1, None] + off[None, None, :]).expand(n, ext, ext).reshape(n, -1)
        rr = (lo[:, 1:2, None] + off[None, :, None]).expand(n, ext, ext).reshape(n, -1)
        keep = (cc <= hi[:, 0:1]) & (rr <= hi[:, 1:2]) & _cells_in_polygon(poly, cc, rr)
        flat = (sample[:, None] * H + rr.clamp(0, H - 1)) * W + cc.clamp(0, W - 1)
        flat = torch.where(keep, flat, torch.full_like(flat, B * H * W))
        obj = torch.arange(n, device=dev)[:, None].expand_as(flat)
        winner.scatter_reduce_(0, flat.flatten(), obj.flatten(), "amax", include_self=True)
    winner = winner[:-1].view(B, 1, H * W)
    has = (winner >= 0).float()
    label_map = torch.zeros(B, num_classes, H * W, device=dev)
    if not n:
        return torch.zeros(B, 9, H, W, device=dev), label_map.view(B, num_classes, H, W), has.view(B, H, W)
    w = winner.clamp(min=0)
    box_map = boxes.t().contiguous()[:, w[:, 0]].transpose(0, 1) * has  # (B, 9, H * W)
    label_map.scatter_(1, labels[w], has)
    return box_map.reshape(B, 9, H, W).contiguous(), label_map.view(B, num_classes, H, W), has.view(B, H, W)


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

"""UniDistill LiDAR -> camera losses (methods.md §3.3-3.4) on a CenterPoint head.

Keypoints: per valid GT box 9 BEV points (4 corners, centre, 4 edge midpoints) sampled bilinearly with
``grid_sample(align_corners=False, padding_mode="zeros")``. The grid's last axis is (x -> width/column,
y -> height/row): the **correct** order. The reference swaps the two (its issue #7) and so samples at the
transposed cell; ``transpose_bug=True`` reproduces that.

* Feature loss (low level): ``sum_boxes mean_k mean_c |f_s(p_k) - f_t(p_k)| / (N_b + 1e-4)``; weight 100.
* Relation loss (high level): per box the 9x9 cosine-similarity matrix of the sampled vectors,
  ``sum_boxes mean_{i,j} |R_s - R_t| / (N_b + 1e-4)``; weight 40 (channel counts may differ).
* Response loss: ``d_cls = |max_c clip_sigmoid(z_s) - max_c clip_sigmoid(z_t / 2)|`` (teacher temperature 2),
  ``d_reg = mean over all regression channels of |r_s - r_t|``, both weighted by a Gaussian mask G (per GT box a
  Gaussian with radius ``max(0, int(gaussian_radius(.., 0.7)))`` at its centre, element-wise max):
  ``(sum G d_cls + sum G d_reg) / (sum G + 1e-4)``; weight 10.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from labeldistill_training.losses.detection import (BevGrid, clip_sigmoid, concat_regression, draw_heatmap_gaussian,
                                                    gaussian_radius)


def box_keypoints(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, >=7)`` ego boxes -> ``(N, 9, 2)`` BEV keypoints (x, y) in metres: 4 corners, centre, 4 edge midpoints."""
    x, y, l, w, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4], boxes[:, 6]
    sl = torch.tensor([1, 1, -1, -1, 0, 1, 0, -1, 0], dtype=boxes.dtype, device=boxes.device) * 0.5
    sw = torch.tensor([1, -1, -1, 1, 0, 0, -1, 0, 1], dtype=boxes.dtype, device=boxes.device) * 0.5
    a = l[:, None] * sl[None]
    b = w[:, None] * sw[None]
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack([x[:, None] + a * c - b * s, y[:, None] + a * s + b * c], dim=-1)


def sample_keypoints(feat: torch.Tensor, kp_xy: torch.Tensor, grid: BevGrid, transpose_bug: bool = False) -> torch.Tensor:
    """Bilinear features at keypoints. ``feat (C, H, W)`` (rows = y), ``kp_xy (N, K, 2)`` metres -> ``(N, K, C)``."""
    C, H, W = feat.shape
    u = (kp_xy[..., 0] - grid.x_min) / grid.cell  # column coordinate, cell edges at integers
    v = (kp_xy[..., 1] - grid.y_min) / grid.cell  # row coordinate
    g = torch.stack([u / W * 2 - 1, v / H * 2 - 1], dim=-1)
    if transpose_bug:
        g = g[..., [1, 0]]
    N, K = kp_xy.shape[:2]
    out = F.grid_sample(feat[None].float(), g.reshape(1, 1, N * K, 2).float(), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out[0, :, 0].t().reshape(N, K, C)


def keypoint_feature_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Summed over boxes: ``mean_{k,c} |fs - ft|``; inputs ``(N, K, C)``."""
    return (fs - ft).abs().mean(dim=(1, 2)).sum()


def keypoint_relation_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Summed over boxes: ``mean_{i,j} |R_s - R_t|`` with R the KxK cosine-similarity matrix; ``(N, K, C_s/C_t)``."""
    ns = fs / (fs.norm(dim=-1, keepdim=True) + 1e-4)
    nt = ft / (ft.norm(dim=-1, keepdim=True) + 1e-4)
    rs = ns @ ns.transpose(1, 2)
    rt = nt @ nt.transpose(1, 2)
    return (rs - rt).abs().mean(dim=(1, 2)).sum()


def gaussian_box_mask(gt_boxes: Sequence[torch.Tensor], grid: BevGrid, min_overlap: float = 0.7) -> torch.Tensor:
    """``(B, H, W)`` element-wise max of per-box Gaussians (radius >= 0, sigma = (2r+1)/6) at the integer centre."""
    dev = gt_boxes[0].device if len(gt_boxes) else torch.device("cpu")
    G = torch.zeros(len(gt_boxes), grid.H, grid.W, device=dev)
    for b, boxes in enumerate(gt_boxes):
        for bx in boxes.tolist():
            cx, cy = (bx[0] - grid.x_min) / grid.cell, (bx[1] - grid.y_min) / grid.cell
            if not (0 <= cx < grid.W and 0 <= cy < grid.H):
                continue
            r = max(0, int(gaussian_radius(bx[3] / grid.cell, bx[4] / grid.cell, min_overlap)))
            draw_heatmap_gaussian(G[b], (int(cx), int(cy)), r)
    return G


def unidistill_response_loss(student_heads: Sequence[dict], teacher_heads: Sequence[dict], G: torch.Tensor,
                             teacher_temperature: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(L_cls, L_reg)`` (see the module docstring); ``G (B, H, W)``."""
    zs = torch.cat([h["heatmap"] for h in student_heads], 1)
    zt = torch.cat([h["heatmap"] for h in teacher_heads], 1).detach()
    d_cls = (clip_sigmoid(zs).max(1).values - clip_sigmoid(zt / teacher_temperature).max(1).values).abs()
    rs = torch.cat([concat_regression(h) for h in student_heads], 1).float()
    rt = torch.cat([concat_regression(h) for h in teacher_heads], 1).float().detach()
    d_reg = (rs - rt).abs().mean(1)
    norm = G.sum() + 1e-4
    return (G * d_cls).sum() / norm, (G * d_reg).sum() / norm


class UniDistillLoss:
    """UniDistill L->C losses with the reference weights (feature 100, relation 40, response 10).

    ``__call__(student_low, teacher_low, student_high, teacher_high, student_heads, teacher_heads, gt_boxes)``;
    ``*_low/*_high``: ``(B, C, H, W)`` maps on the shared grid (the low-level pair must have equal channels:
    adapt the student first); ``gt_boxes``: per sample ``(N_b, 9)`` valid boxes.
    """

    def __init__(self, grid: BevGrid, feature_weight: float = 100.0, relation_weight: float = 40.0,
                 response_weight: float = 10.0, teacher_temperature: float = 2.0, transpose_bug: bool = False,
                 mask_min_overlap: float = 0.7) -> None:
        self.grid = grid
        self.wf, self.wr, self.wresp = feature_weight, relation_weight, response_weight
        self.T = teacher_temperature
        self.transpose_bug = transpose_bug
        self.min_overlap = mask_min_overlap

    def __call__(self, student_low, teacher_low, student_high, teacher_high, student_heads, teacher_heads,
                 gt_boxes) -> tuple[torch.Tensor, dict]:
        n_boxes = sum(int(b.shape[0]) for b in gt_boxes)
        lf = student_low.new_zeros(())
        lr = student_low.new_zeros(())
        for b, boxes in enumerate(gt_boxes):
            if boxes.shape[0] == 0:
                continue
            kp = box_keypoints(boxes.float())
            fs = sample_keypoints(student_low[b], kp, self.grid, self.transpose_bug)
            ft = sample_keypoints(teacher_low[b].detach(), kp, self.grid, self.transpose_bug)
            lf = lf + keypoint_feature_loss(fs, ft)
            hs = sample_keypoints(student_high[b], kp, self.grid, self.transpose_bug)
            ht = sample_keypoints(teacher_high[b].detach(), kp, self.grid, self.transpose_bug)
            lr = lr + keypoint_relation_loss(hs, ht)
        lf = lf / (n_boxes + 1e-4)
        lr = lr / (n_boxes + 1e-4)
        G = gaussian_box_mask(gt_boxes, self.grid, self.min_overlap)
        lc, lg = unidistill_response_loss(student_heads, teacher_heads, G, self.T)
        parts = {"feature": self.wf * lf, "relation": self.wr * lr, "response": self.wresp * (lc + lg)}
        return sum(parts.values()), parts

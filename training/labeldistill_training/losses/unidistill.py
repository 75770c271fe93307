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
* IoU channel (reference on): the regression channels of each task are ``[reg 2, height 1, dim 3, rot 2, vel 2,
  iou 1]`` (66 for 6 tasks). Student: the distiller's IoU-aware branch, trained with the IoU-aware L1 loss
  ``|iou_pred - 2 (IoU_bev(decoded box, GT) - 0.5)| / #objects`` at the GT centre cells (CenterHeadIouAware);
  teacher (no IoU branch): ``2 (IoU_bev(teacher box at the cell, GT box of the cell) - 0.5)``, the GT box of a
  cell being the one whose Gaussian is largest there. ``IoU_bev`` is OpenPCDet's ``boxes3d_nearest_bev_iou``
  (each box snapped to the nearest axis-aligned box, then the axis-aligned IoU), as the reference's target.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from labeldistill_ros.model.box_coder import BoxCoder
from labeldistill_ros.model.config import BEVGridConfig
from labeldistill_training.losses.detection import (clip_sigmoid, concat_regression, gather_feat, gaussian_radius,
                                                    splat_gaussians)

IOU_TARGET_LOG_SIZE_RANGE = (math.log(1e-3), math.log(30.0))
"""The reference's size clamp of the boxes its IoU target is computed on: [1 mm, 30 m]."""


def box_keypoints(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, >=7)`` ego boxes -> ``(N, 9, 2)`` BEV keypoints (x, y) in metres: 4 corners, centre, 4 edge midpoints."""
    x, y, l, w, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4], boxes[:, 6]
    sl = torch.tensor([1, 1, -1, -1, 0, 1, 0, -1, 0], dtype=boxes.dtype, device=boxes.device) * 0.5
    sw = torch.tensor([1, -1, -1, 1, 0, 0, -1, 0, 1], dtype=boxes.dtype, device=boxes.device) * 0.5
    a = l[:, None] * sl[None]
    b = w[:, None] * sw[None]
    c, s = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack([x[:, None] + a * c - b * s, y[:, None] + a * s + b * c], dim=-1)


def sample_keypoints(feat: torch.Tensor, kp_xy: torch.Tensor, grid: BEVGridConfig, transpose_bug: bool = False) -> torch.Tensor:
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


def gaussian_box_mask(gt_boxes: Sequence[torch.Tensor], grid: BEVGridConfig, min_overlap: float = 0.7,
                      return_index: bool = False):
    """``(B, H, W)`` element-wise max of per-box Gaussians (radius ``max(0, int(r))``, sigma = (2r+1)/6) at the
    integer centre cell, for the boxes whose centre is on the grid (all boxes at once, :func:`splat_gaussians`).

    ``return_index``: also return ``(B, H, W)`` long, the index (into the sample's ``gt_boxes``) of the box whose
    Gaussian gives the cell its value (the first such box on ties), -1 where the mask is 0."""
    dev = gt_boxes[0].device if len(gt_boxes) else torch.device("cpu")
    coder = BoxCoder(grid)
    counts = [int(b.shape[0]) for b in gt_boxes]
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    boxes = torch.cat([b[:, :7].float() for b in gt_boxes] + [torch.zeros(0, 7, device=dev)])
    sample = torch.cat([torch.full((n,), b, dtype=torch.long, device=dev) for b, n in enumerate(counts)] + [empty])
    j = torch.cat([torch.arange(n, device=dev) for n in counts] + [empty])
    cells = torch.floor(coder.centre_cells(boxes))
    cells = torch.where(torch.isfinite(cells), cells, torch.full_like(cells, -1.0)).long()
    r = gaussian_radius(boxes[:, 3].double() / coder.cell_x, boxes[:, 4].double() / coder.cell_y, min_overlap)
    radius = r.nan_to_num(0.0).trunc().long().clamp(min=0)
    out = splat_gaussians(len(gt_boxes), coder.ny, coder.nx, sample, cells, radius, coder.inside(cells),
                          return_index)
    if not return_index:
        return out
    G, idx = out
    return G, torch.where(idx >= 0, j[idx.clamp(min=0)] if j.numel() else idx, idx)


def limit_period(val: torch.Tensor, offset: float = 0.5, period: float = math.pi) -> torch.Tensor:
    return val - torch.floor(val / period + offset) * period


def nearest_bev_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise BEV IoU of boxes ``(..., 5) = (x, y, l, w, yaw)`` after snapping each to the nearest
    axis-aligned box (OpenPCDet ``boxes3d_nearest_bev_iou``: extents swapped when ``|yaw| mod pi`` is nearer
    90 deg than 0). Returns ``(...)`` in [0, 1]."""

    def aligned(bx):
        near_x = limit_period(bx[..., 4]).abs() < math.pi / 4
        ex = torch.where(near_x, bx[..., 2], bx[..., 3])
        ey = torch.where(near_x, bx[..., 3], bx[..., 2])
        return bx[..., 0] - ex / 2, bx[..., 1] - ey / 2, bx[..., 0] + ex / 2, bx[..., 1] + ey / 2

    ax0, ay0, ax1, ay1 = aligned(a)
    bx0, by0, bx1, by1 = aligned(b)
    iw = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
    ih = (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union.clamp(min=1e-6)


def boxes_from_code(code: torch.Tensor, col: torch.Tensor, row: torch.Tensor, grid: BEVGridConfig) -> torch.Tensor:
    """BEV boxes ``(..., 5) = (x, y, l, w, yaw)`` in metres from 10-d box codes ``(..., 10)`` at cells ``(col, row)``
    (broadcastable to ``code[..., 0]``), decoded by the runtime's :class:`BoxCoder` with the reference's size
    clamp for this target, [1 mm, 30 m] (:data:`IOU_TARGET_LOG_SIZE_RANGE`)."""
    boxes = BoxCoder(grid, log_size_range=IOU_TARGET_LOG_SIZE_RANGE).decode(code, col, row)
    return boxes[..., [0, 1, 3, 4, 6]]


def teacher_iou_channel(teacher_heads: Sequence[dict], gt_boxes: Sequence[torch.Tensor], box_index: torch.Tensor,
                        grid: BEVGridConfig) -> list[torch.Tensor]:
    """Per task ``(B, 1, H, W)``: ``2 (IoU_bev(teacher box decoded at the cell, GT box of the cell) - 0.5)``,
    0 where no GT box covers the cell (``box_index`` -1, from :func:`gaussian_box_mask`)."""
    B, H, W = box_index.shape
    dev = box_index.device
    rows = torch.arange(H, device=dev, dtype=torch.float32).view(1, H, 1)
    cols = torch.arange(W, device=dev, dtype=torch.float32).view(1, 1, W)
    gt = torch.zeros(B, H, W, 5, device=dev)
    for b, boxes in enumerate(gt_boxes):
        if boxes.shape[0]:
            sel = box_index[b].clamp(min=0)
            bb = boxes.float()[:, [0, 1, 3, 4, 6]].to(dev)
            gt[b] = bb[sel]
    valid = box_index >= 0
    out = []
    with torch.no_grad():
        for h in teacher_heads:
            code = concat_regression(h).float().permute(0, 2, 3, 1)  # (B, H, W, 10)
            tb = boxes_from_code(code, cols, rows, grid)
            iou = nearest_bev_iou(tb, gt)
            out.append(torch.where(valid, 2 * (iou - 0.5), torch.zeros_like(iou)).unsqueeze(1))
    return out


def iou_aware_loss(student_heads: Sequence[dict], student_iou: Sequence[torch.Tensor], targets,
                   grid: BEVGridConfig) -> torch.Tensor:
    """CenterHeadIouAware's IoU-aware loss, summed over tasks: at each GT centre cell, ``|iou_pred - 2 (IoU_bev(
    student box, GT box) - 0.5)|`` (target detached), normalised by the object count (``+ 1e-4``)."""
    total = student_iou[0].new_zeros(()).float() if len(student_iou) else torch.zeros(())
    for h, iou_map, tgt in zip(student_heads, student_iou, targets):
        W = iou_map.shape[-1]
        col, row = (tgt.ind % W).float(), (tgt.ind // W).float()
        pred = gather_feat(iou_map.float(), tgt.ind)[..., 0]  # (B, M)
        with torch.no_grad():
            r_s = gather_feat(concat_regression(h).float(), tgt.ind)
            gt_code = torch.nan_to_num(tgt.box.float())
            iou = nearest_bev_iou(boxes_from_code(r_s, col, row, grid), boxes_from_code(gt_code, col, row, grid))
        m = tgt.mask.float()
        total = total + ((pred - 2 * (iou - 0.5)).abs() * m).sum() / (m.sum() + 1e-4)
    return total


def unidistill_response_loss(student_heads: Sequence[dict], teacher_heads: Sequence[dict], G: torch.Tensor,
                             teacher_temperature: float = 2.0, student_iou: Sequence[torch.Tensor] | None = None,
                             teacher_iou: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(L_cls, L_reg)`` (see the module docstring); ``G (B, H, W)``. With ``student_iou`` /
    ``teacher_iou`` (per task ``(B, 1, H, W)``) each task's IoU channel joins its 10 regression channels."""
    zs = torch.cat([h["heatmap"] for h in student_heads], 1)
    zt = torch.cat([h["heatmap"] for h in teacher_heads], 1).detach()
    d_cls = (clip_sigmoid(zs).max(1).values - clip_sigmoid(zt / teacher_temperature).max(1).values).abs()
    if (student_iou is None) != (teacher_iou is None):
        raise ValueError("the IoU channel needs both the student's and the teacher's")
    rs_list = [concat_regression(h).float() for h in student_heads]
    rt_list = [concat_regression(h).float() for h in teacher_heads]
    if student_iou is not None:
        rs_list = [torch.cat([r, i.float()], 1) for r, i in zip(rs_list, student_iou)]
        rt_list = [torch.cat([r, i.float()], 1) for r, i in zip(rt_list, teacher_iou)]
    rs = torch.cat(rs_list, 1)
    rt = torch.cat(rt_list, 1).detach()
    d_reg = (rs - rt).abs().mean(1)
    norm = G.sum() + 1e-4
    return (G * d_cls).sum() / norm, (G * d_reg).sum() / norm


class UniDistillLoss:
    """UniDistill L->C losses with the reference weights (feature 100, relation 40, response 10).

    ``__call__(student_low, teacher_low, student_high, teacher_high, student_heads, teacher_heads, gt_boxes,
    student_iou=None, targets=None)``; ``*_low/*_high``: ``(B, C, H, W)`` maps on the shared grid (the low-level
    pair must have equal channels: adapt the student first); ``gt_boxes``: per sample ``(N_b, 9)`` valid boxes.
    ``student_iou`` (per task ``(B, 1, H, W)``, the student's IoU-aware channel) switches the IoU channel on: the
    teacher's channel is derived from its boxes (module docstring) and, with ``targets``, the IoU-aware loss of
    the student's channel is added as part ``iou_aware`` (weight ``iou_aware_weight``).
    """

    def __init__(self, grid: BEVGridConfig, feature_weight: float = 100.0, relation_weight: float = 40.0,
                 response_weight: float = 10.0, teacher_temperature: float = 2.0, transpose_bug: bool = False,
                 mask_min_overlap: float = 0.7, iou_aware_weight: float = 1.0) -> None:
        self.grid = grid
        self.wf, self.wr, self.wresp = feature_weight, relation_weight, response_weight
        self.T = teacher_temperature
        self.transpose_bug = transpose_bug
        self.min_overlap = mask_min_overlap
        self.w_iou_aware = iou_aware_weight

    def __call__(self, student_low, teacher_low, student_high, teacher_high, student_heads, teacher_heads,
                 gt_boxes, student_iou=None, targets=None) -> tuple[torch.Tensor, dict]:
        if student_low.shape[1] != teacher_low.shape[1]:
            raise ValueError(f"UniDistill feature loss: the student's low-level map has {student_low.shape[1]} "
                             f"channels, the teacher's {teacher_low.shape[1]}: they must be equal (adapt the "
                             f"student first: distill.unidistill.adaptor)")
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
        teacher_iou = None
        if student_iou is not None:
            G, index = gaussian_box_mask(gt_boxes, self.grid, self.min_overlap, return_index=True)
            teacher_iou = teacher_iou_channel(teacher_heads, gt_boxes, index, self.grid)
        else:
            G = gaussian_box_mask(gt_boxes, self.grid, self.min_overlap)
        lc, lg = unidistill_response_loss(student_heads, teacher_heads, G, self.T, student_iou, teacher_iou)
        parts = {"feature": self.wf * lf, "relation": self.wr * lr, "response": self.wresp * (lc + lg)}
        if student_iou is not None and targets is not None:
            parts["iou_aware"] = self.w_iou_aware * iou_aware_loss(student_heads, student_iou, targets, self.grid)
        return sum(parts.values()), parts
